//! Enums whose variants are the values of one metric label, so that a
//! labelled family is an array of handles indexed by the variant.

/// Declares an enum whose variants stand for a label's values, each
/// variant written `Variant => "value"`, with `VALUES`, the values in the
/// variants' order: register them with [`Metrics::counters`] and index the
/// array with `variant as usize`.
///
/// [`Metrics::counters`]: super::Metrics::counters
macro_rules! label_values {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $($(#[$variant_meta:meta])* $variant:ident => $value:literal,)+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        $vis enum $name {
            $($(#[$variant_meta])* $variant,)+
        }

        impl $name {
            /// The label's value of each variant, in their order.
            pub const VALUES: [&'static str; [$($value),+].len()] = [$($value),+];
        }
    };
}

pub(crate) use label_values;

#[cfg(test)]
mod tests {
    label_values! {
        /// A test label.
        enum Color {
            Red => "red",
            /// Documented.
            Green => "green",
        }
    }

    #[test]
    fn values_follow_the_variants() {
        assert_eq!(Color::VALUES, ["red", "green"]);
        assert_eq!(Color::VALUES[Color::Green as usize], "green");
        assert_eq!(Color::VALUES[Color::Red as usize], "red");
    }
}
