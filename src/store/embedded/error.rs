//! How a redb error becomes a retryable or permanent [`StoreError`].
//!
//! Retryable: an I/O error (a full disk, a transient device error), the
//! contention redb reports instead of waiting, and `PreviousIo`, redb's
//! answer to everything after an I/O error until the database is reopened,
//! which the store does by itself (see `handle`). Permanent: a damaged
//! file, a file of another format or table layout, a value over redb's
//! limits, and a database already closed. An error redb adds in a later
//! release is retryable, as every error was before.

use crate::store::{ErrorClass, StoreError};

/// Turns a redb error into a store error of its class.
pub fn redb_error(error: impl Into<redb::Error>) -> StoreError {
    let error = error.into();
    let message = format!("embedded database: {error}");
    match classify(&error) {
        ErrorClass::Retryable => StoreError::Unavailable(message),
        ErrorClass::Permanent => StoreError::Permanent(message),
    }
}

/// Returns whether the operation that failed with `error` may succeed later.
fn classify(error: &redb::Error) -> ErrorClass {
    use redb::Error;
    match error {
        Error::Io(_)
        | Error::PreviousIo
        | Error::DatabaseAlreadyOpen
        | Error::TransactionInProgress
        | Error::WouldBlock => ErrorClass::Retryable,
        Error::Corrupted(_)
        | Error::UpgradeRequired(_)
        | Error::TableTypeMismatch { .. }
        | Error::TypeDefinitionChanged { .. }
        | Error::TableIsMultimap(_)
        | Error::TableIsNotMultimap(_)
        | Error::TableDoesNotExist(_)
        | Error::ValueTooLarge(_)
        | Error::DatabaseClosed
        | Error::LockPoisoned(_)
        | Error::TransactionPoisoned
        | Error::Unsupported => ErrorClass::Permanent,
        // Misuse of the API (savepoints, repair, open tables, key order):
        // a defect of this build, which a retry repeats.
        Error::InvalidSavepoint
        | Error::ImmediateDurabilityRequired
        | Error::RepairAborted
        | Error::PersistentSavepointModified
        | Error::NonDurableCommitUnsupported
        | Error::EphemeralSavepointUnsupported
        | Error::PersistentSavepointExists
        | Error::EphemeralSavepointExists
        | Error::UnorderedKey
        | Error::TableExists(_)
        | Error::TableAlreadyOpen(..)
        | Error::LockProtocolMismatch
        | Error::ReadTransactionStillInUse(_) => ErrorClass::Permanent,
        _ => ErrorClass::Retryable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_and_contention_are_retryable_damage_and_a_closed_database_are_not() {
        let io = std::io::Error::from(std::io::ErrorKind::StorageFull);
        let retryable = [
            redb::Error::Io(io),
            redb::Error::PreviousIo,
            redb::Error::WouldBlock,
            redb::Error::DatabaseAlreadyOpen,
        ];
        for error in retryable {
            let message = error.to_string();
            let mapped = redb_error(error);
            assert_eq!(mapped.class(), ErrorClass::Retryable, "{mapped}");
            assert!(matches!(mapped, StoreError::Unavailable(_)), "{mapped:?}");
            assert!(mapped.to_string().contains(&message), "{mapped}");
        }
        let permanent = [
            redb::Error::Corrupted("bad page checksum".to_owned()),
            redb::Error::DatabaseClosed,
            redb::Error::UpgradeRequired(2),
            redb::Error::ValueTooLarge(4 << 30),
            redb::Error::TableDoesNotExist("read_states".to_owned()),
            redb::Error::TransactionPoisoned,
        ];
        for error in permanent {
            let mapped = redb_error(error);
            assert_eq!(mapped.class(), ErrorClass::Permanent, "{mapped}");
            assert!(matches!(mapped, StoreError::Permanent(_)), "{mapped:?}");
        }
        let storage = redb::StorageError::Corrupted("torn write".to_owned());
        assert_eq!(redb_error(storage).class(), ErrorClass::Permanent);
    }
}
