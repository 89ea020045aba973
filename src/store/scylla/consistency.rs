//! The configured consistency levels, as the driver spells them.

use crate::config::Consistency;

/// Maps a configured consistency to the driver's.
pub fn consistency(level: Consistency) -> ::scylla::statement::Consistency {
    use ::scylla::statement::Consistency as Driver;
    match level {
        Consistency::Any => Driver::Any,
        Consistency::One => Driver::One,
        Consistency::Two => Driver::Two,
        Consistency::Three => Driver::Three,
        Consistency::Quorum => Driver::Quorum,
        Consistency::All => Driver::All,
        Consistency::LocalQuorum => Driver::LocalQuorum,
        Consistency::EachQuorum => Driver::EachQuorum,
        Consistency::LocalOne => Driver::LocalOne,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_consistency_maps_to_the_drivers() {
        use ::scylla::statement::Consistency as Driver;
        let pairs = [
            (Consistency::Any, Driver::Any),
            (Consistency::One, Driver::One),
            (Consistency::Two, Driver::Two),
            (Consistency::Three, Driver::Three),
            (Consistency::Quorum, Driver::Quorum),
            (Consistency::All, Driver::All),
            (Consistency::LocalQuorum, Driver::LocalQuorum),
            (Consistency::EachQuorum, Driver::EachQuorum),
            (Consistency::LocalOne, Driver::LocalOne),
        ];
        for (ours, theirs) in pairs {
            assert_eq!(consistency(ours), theirs);
        }
    }
}
