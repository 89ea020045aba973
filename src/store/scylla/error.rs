//! The Scylla store's errors: why it could not be opened
//! ([`ScyllaError`]), and how a failed request's driver error becomes a
//! retryable or permanent [`StoreError`].
//!
//! The classification asks one question: will the same request succeed a
//! little later, with nothing changed by hand? Lost connections, timeouts,
//! too few live replicas, an overloaded or bootstrapping node will pass.
//! A statement the cluster rejects (syntax, an invalid query, which is how
//! a dropped table or column shows up), a missing permission, a value that
//! cannot be encoded, a result that no longer matches the columns we read,
//! or a partition with too many tombstones to read will not: a tombstone
//! overflow lasts until compaction purges them, days after gc_grace_seconds.
//! An error the driver adds in a later release is retryable, as every error
//! was before this distinction: the write-behind retries both classes
//! anyway, so the cost of a wrong guess is only a client's wasted retry.

use ::scylla::errors::{
    ConnectionPoolError, DbError, ExecutionError, PrepareError, RequestAttemptError,
    UseKeyspaceError,
};

use super::migrate::MigrateError;
use crate::store::{ErrorClass, StoreError};

/// Why the Scylla store could not be opened or migrated.
#[derive(Debug, thiserror::Error)]
pub enum ScyllaError {
    /// No contact point answered, or authentication failed.
    #[error(
        "cannot connect to the cluster at {contact_points}: {message}; check \
         scylla.contact_points, the credentials and that the cluster is up"
    )]
    Connect {
        contact_points: String,
        message: String,
    },
    /// `scylla.local_datacenter` names no datacenter of the cluster.
    #[error(
        "scylla.local_datacenter is {local:?}, but the cluster's datacenters are [{known}]; \
         set it to the datacenter of this service"
    )]
    LocalDatacenter { local: String, known: String },
    /// The TLS settings could not be turned into a client configuration.
    #[error("TLS setup failed: {0}")]
    Tls(String),
    /// The schema is missing, behind, or not ours.
    #[error(transparent)]
    Schema(#[from] MigrateError),
    /// A statement could not be prepared.
    #[error(transparent)]
    Prepare(#[from] PrepareFailed),
}

/// A statement could not be prepared: the keyspace lacks the tables it
/// names. Both the store's and the cluster's statements fail this way.
#[derive(Debug, thiserror::Error)]
#[error(
    "preparing the {statement} statement failed: {message}; is the keyspace migrated \
     (`readstates migrate`)?"
)]
pub struct PrepareFailed {
    pub statement: &'static str,
    pub message: String,
}

/// A failed request: the driver's message names the failure (timeout,
/// unavailable replicas, overloaded node, broken connection, rejected
/// statement) and the nodes, never credentials, which the driver does not
/// put in its errors.
pub fn request_failed(action: &str, error: &ExecutionError) -> StoreError {
    store_error(classify(error), action, error)
}

/// A result that cannot be read as the rows we asked for: the table's
/// columns are not the ones this build selects, and reading again will not
/// change them.
pub fn result_unreadable(action: &str, error: impl std::fmt::Display) -> StoreError {
    store_error(ErrorClass::Permanent, action, error)
}

fn store_error(class: ErrorClass, action: &str, error: impl std::fmt::Display) -> StoreError {
    let message = format!("scylla: {action}: {error}");
    match class {
        ErrorClass::Retryable => StoreError::Unavailable(message),
        ErrorClass::Permanent => StoreError::Permanent(message),
    }
}

/// Returns whether the request that failed with `error` may succeed later.
pub fn classify(error: &ExecutionError) -> ErrorClass {
    match error {
        // Our statement or values are malformed: a defect of this build.
        ExecutionError::BadQuery(_) => ErrorClass::Permanent,
        ExecutionError::PrepareError(error) => classify_prepare(error),
        ExecutionError::LastAttemptError(error) => classify_attempt(error),
        ExecutionError::UseKeyspaceError(UseKeyspaceError::RequestError(error)) => {
            classify_attempt(error)
        }
        ExecutionError::UseKeyspaceError(UseKeyspaceError::BadKeyspaceName(_)) => {
            ErrorClass::Permanent
        }
        // No node of the local datacenter to ask (start-up checked that it
        // has nodes, so they left or are down); a pool that is broken or
        // still connecting; a client timeout; schema agreement or metadata
        // not reached yet: all pass when the nodes are back.
        ExecutionError::EmptyPlan
        | ExecutionError::ConnectionPoolError(_)
        | ExecutionError::RequestTimeout(_)
        | ExecutionError::SchemaAgreementError(_)
        | ExecutionError::MetadataError(_) => ErrorClass::Retryable,
        _ => ErrorClass::Retryable,
    }
}

fn classify_prepare(error: &PrepareError) -> ErrorClass {
    match error {
        PrepareError::AllAttemptsFailed { first_attempt } => classify_attempt(first_attempt),
        PrepareError::ConnectionPoolError(
            ConnectionPoolError::Broken { .. } | ConnectionPoolError::Initializing,
        ) => ErrorClass::Retryable,
        // Nodes disagreeing on a statement's id is a schema change still
        // spreading through the cluster.
        _ => ErrorClass::Retryable,
    }
}

fn classify_attempt(error: &RequestAttemptError) -> ErrorClass {
    match error {
        RequestAttemptError::DbError(error, reason) => classify_db(error, reason),
        RequestAttemptError::UnableToAllocStreamId
        | RequestAttemptError::BrokenConnectionError(_) => ErrorClass::Retryable,
        // Values we cannot encode, or responses we cannot decode (a
        // protocol mismatch between the driver and the cluster), a statement
        // whose id changed on re-preparing (its table changed), or a driver
        // or server defect: the same request fails the same way again.
        RequestAttemptError::SerializationError(_)
        | RequestAttemptError::CqlRequestSerialization(_)
        | RequestAttemptError::BodyExtensionsParseError(_)
        | RequestAttemptError::CqlResultParseError(_)
        | RequestAttemptError::CqlErrorParseError(_)
        | RequestAttemptError::UnexpectedResponse(_)
        | RequestAttemptError::RepreparedIdChanged { .. }
        | RequestAttemptError::RepreparedIdMissingInBatch
        | RequestAttemptError::NonfinishedPagingState => ErrorClass::Permanent,
        _ => ErrorClass::Retryable,
    }
}

/// Classifies an error the cluster answered with; `reason` is its message.
pub fn classify_db(error: &DbError, reason: &str) -> ErrorClass {
    match error {
        // Too few replicas alive or answering in time, an overloaded,
        // starting or rate-limited node: load and membership change.
        DbError::Unavailable { .. }
        | DbError::Overloaded
        | DbError::IsBootstrapping
        | DbError::ReadTimeout { .. }
        | DbError::WriteTimeout { .. }
        | DbError::RateLimitReached { .. }
        // The driver re-prepares by itself; should this reach us, the next
        // request prepares again.
        | DbError::Unprepared { .. }
        // ScyllaDB answers a replica's exhausted memory (bad_alloc) with a
        // server error; it passes with the load.
        | DbError::ServerError
        // We never truncate; were it ours, a truncate fails on a node being
        // down, which passes.
        | DbError::TruncateError => ErrorClass::Retryable,
        // A replica failed rather than timed out. Most failures are a
        // node's trouble (a crash, a disk), but Cassandra also fails reads
        // over `tombstone_failure_threshold` (naming READ_TOO_MANY_TOMBSTONES
        // in the message) or over its read size limit, and those last until
        // compaction or a repair of the data.
        DbError::ReadFailure { .. } | DbError::WriteFailure { .. } => {
            if names_lasting_failure(reason) {
                ErrorClass::Permanent
            } else {
                ErrorClass::Retryable
            }
        }
        // The statement or the schema is wrong (a dropped keyspace, table or
        // column answers Invalid), a permission or the credentials are
        // missing, the cluster's configuration refuses the query, a
        // function failed on the data, or the driver and the node disagree
        // on the protocol: nothing changes until someone acts.
        DbError::SyntaxError
        | DbError::Invalid
        | DbError::AlreadyExists { .. }
        | DbError::FunctionFailure { .. }
        | DbError::AuthenticationError
        | DbError::Unauthorized
        | DbError::ConfigError
        | DbError::ProtocolError => ErrorClass::Permanent,
        // An error code outside the protocol specification.
        DbError::Other(_) => ErrorClass::Retryable,
        _ => ErrorClass::Retryable,
    }
}

/// Returns whether a replica failure's message names a cause that outlasts
/// a retry: too many tombstones, or a read larger than the node allows.
fn names_lasting_failure(reason: &str) -> bool {
    let reason = reason.to_ascii_uppercase();
    reason.contains("TOMBSTONE") || reason.contains("READ_SIZE_TOO_LARGE")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use ::scylla::errors::{BadQuery, BrokenConnectionErrorKind, WriteType};
    use ::scylla::statement::Consistency;

    use super::*;

    /// An error the cluster answered with, as the driver returns it.
    fn answered(error: DbError, reason: &str) -> ExecutionError {
        ExecutionError::LastAttemptError(RequestAttemptError::DbError(error, reason.to_owned()))
    }

    fn read_failure() -> DbError {
        DbError::ReadFailure {
            consistency: Consistency::LocalQuorum,
            received: 0,
            required: 1,
            numfailures: 1,
            data_present: false,
        }
    }

    #[test]
    fn an_unreachable_slow_or_busy_cluster_is_retryable() {
        let broken = RequestAttemptError::BrokenConnectionError(
            BrokenConnectionErrorKind::ChannelError.into(),
        );
        let retryable = [
            ExecutionError::RequestTimeout(Duration::from_secs(2)),
            ExecutionError::EmptyPlan,
            ExecutionError::ConnectionPoolError(ConnectionPoolError::Initializing),
            ExecutionError::LastAttemptError(broken),
            ExecutionError::LastAttemptError(RequestAttemptError::UnableToAllocStreamId),
            ExecutionError::PrepareError(PrepareError::ConnectionPoolError(
                ConnectionPoolError::Initializing,
            )),
            answered(
                DbError::Unavailable {
                    consistency: Consistency::LocalQuorum,
                    required: 2,
                    alive: 1,
                },
                "cannot achieve consistency level",
            ),
            answered(DbError::Overloaded, "overloaded"),
            answered(DbError::IsBootstrapping, "bootstrapping"),
            answered(
                DbError::ReadTimeout {
                    consistency: Consistency::LocalQuorum,
                    received: 1,
                    required: 2,
                    data_present: true,
                },
                "timed out",
            ),
            answered(
                DbError::WriteTimeout {
                    consistency: Consistency::LocalQuorum,
                    received: 1,
                    required: 2,
                    write_type: WriteType::UnloggedBatch,
                },
                "timed out",
            ),
            answered(DbError::TruncateError, "truncate failed"),
            answered(DbError::ServerError, "std::bad_alloc"),
            answered(
                read_failure(),
                "Operation failed - received 0 responses and 1 failures",
            ),
            answered(DbError::Other(0x7777), "a code from the future"),
        ];
        for error in retryable {
            assert_eq!(classify(&error), ErrorClass::Retryable, "{error}");
            let mapped = request_failed("reading", &error);
            assert!(matches!(mapped, StoreError::Unavailable(_)), "{mapped:?}");
        }
    }

    #[test]
    fn a_rejected_statement_a_missing_table_or_permission_or_a_tombstone_overflow_is_permanent() {
        let tombstones = "Operation failed - received 0 responses and 1 failures: \
                          READ_TOO_MANY_TOMBSTONES from /10.0.0.1:7000";
        let permanent = [
            answered(DbError::SyntaxError, "line 1:7 no viable alternative"),
            answered(DbError::Invalid, "unconfigured table read_states"),
            answered(DbError::Invalid, "Keyspace readstates does not exist"),
            answered(DbError::Unauthorized, "User app has no SELECT permission"),
            answered(DbError::AuthenticationError, "bad credentials"),
            answered(DbError::ConfigError, "configuration refuses the query"),
            answered(DbError::ProtocolError, "invalid frame"),
            answered(read_failure(), tombstones),
            answered(read_failure(), "READ_SIZE_TOO_LARGE from /10.0.0.1:7000"),
            ExecutionError::BadQuery(BadQuery::TooManyQueriesInBatchStatement(70_000)),
            ExecutionError::PrepareError(PrepareError::AllAttemptsFailed {
                first_attempt: RequestAttemptError::DbError(
                    DbError::Invalid,
                    "Undefined column name version".to_owned(),
                ),
            }),
            ExecutionError::LastAttemptError(RequestAttemptError::NonfinishedPagingState),
        ];
        for error in permanent {
            assert_eq!(classify(&error), ErrorClass::Permanent, "{error}");
            let mapped = request_failed("reading a user's read states", &error);
            assert!(matches!(mapped, StoreError::Permanent(_)), "{mapped:?}");
            let message = mapped.to_string();
            assert!(message.contains("not retryable"), "{message}");
            assert!(
                message.contains("reading a user's read states"),
                "{message}"
            );
        }
    }

    #[test]
    fn a_result_that_does_not_match_the_columns_read_is_permanent() {
        let mapped = result_unreadable("decoding the version floor", "type check failed");
        assert_eq!(mapped.class(), ErrorClass::Permanent);
        assert!(mapped.to_string().contains("decoding the version floor"));
    }
}
