//! Schema migrations of the Scylla store: the migration files
//! ([`files`]), applied in order and recorded in the keyspace's history
//! table ([`history`]), then the tables themselves checked ([`verify`])
//! against the schema the migrations create ([`schema`]). Statements are
//! written to be re-runnable (`IF NOT EXISTS`), so a run interrupted between
//! a statement and its record is finished by the next run (an `ALTER TABLE
//! ... ADD` has no `IF NOT EXISTS`: it is skipped when the column exists). Replication of
//! an existing keyspace is an operator's `ALTER`.
//!
//! The store calls [`apply`] or [`check`] before it prepares its
//! statements; nothing here uses the store.

mod files;
mod history;
pub(super) mod schema;
mod verify;

use std::time::Duration;

use ::scylla::client::session::Session;
use ::scylla::deserialize::row::DeserializeRow;
use ::scylla::serialize::row::SerializeRow;
use ::scylla::statement::Statement;

use crate::config::ScyllaConfig;
pub use files::migrations;
pub use history::HISTORY_TABLE;

/// Schema changes may wait for every node to agree, which takes longer than
/// an ordinary request.
const DDL_TIMEOUT: Duration = Duration::from_secs(60);

/// Why migrating (or checking the schema) failed.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// An embedded migration file is malformed (a build defect).
    #[error("migration file {file} is malformed: {reason}")]
    BadFile { file: String, reason: &'static str },
    /// A request to the cluster failed.
    #[error("{action} failed: {message}; check that the cluster is up and reachable")]
    Cluster { action: String, message: String },
    /// An applied migration was changed after it ran.
    #[error(
        "migration {version} ({name}) was applied with checksum {applied}, but this build's file \
         has {expected}: an applied migration must never be edited; restore the file, or add a \
         new migration for the change"
    )]
    ChecksumMismatch {
        version: u32,
        name: String,
        applied: String,
        expected: String,
    },
    /// The keyspace has a migration this build does not know.
    #[error(
        "the keyspace has migration {version} ({name}) applied, but this build knows migrations \
         up to {latest} only: it was migrated by a newer readstates; run that version (or newer)"
    )]
    UnknownVersion {
        version: u32,
        name: String,
        latest: u32,
    },
    /// A migration is missing below an applied one.
    #[error(
        "migration {missing} is not applied although later ones are: the schema history in \
         {HISTORY_TABLE} is inconsistent; repair it by hand before migrating"
    )]
    Gap { missing: u32 },
    /// The keyspace exists with tables but without a migration history.
    #[error(
        "keyspace {keyspace} already holds tables ({tables}) but no {HISTORY_TABLE} table: it was \
         not created by `readstates migrate`; refusing to change it (choose another scylla.keyspace)"
    )]
    Unmanaged { keyspace: String, tables: String },
    /// The history is complete, but the tables or columns are not the ones
    /// the migrations create: they were changed by hand.
    #[error(
        "keyspace {keyspace} has every migration applied, but its tables differ from the ones \
         they create: {differences}. It was changed outside `readstates migrate`: restore those \
         tables and columns as migrations/ defines them, or point scylla.keyspace at a new \
         keyspace and migrate it"
    )]
    SchemaMismatch {
        keyspace: String,
        differences: String,
    },
    /// The schema is behind this build.
    #[error(
        "keyspace {keyspace} lacks migrations {pending}: run `readstates migrate --config <file>` \
         (or set scylla.migrate_on_start = true)"
    )]
    Pending { keyspace: String, pending: String },
}

/// What a migration run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrationReport {
    /// Versions that were already applied.
    pub already_applied: Vec<u32>,
    /// Versions applied by this run, in order.
    pub applied_now: Vec<u32>,
}

/// Applies every pending migration in order and records each one.
pub async fn apply(
    session: &Session,
    config: &ScyllaConfig,
) -> Result<MigrationReport, MigrateError> {
    let known = migrations()?;
    let applied = history::applied_migrations(session, config).await?;
    let pending = history::plan(&known, &applied)?;
    let mut report = MigrationReport {
        already_applied: applied.iter().map(|record| record.version).collect(),
        applied_now: Vec::new(),
    };
    report.already_applied.sort_unstable();
    for migration in pending {
        tracing::info!(
            version = migration.version,
            name = migration.name,
            keyspace = %config.keyspace,
            "applying migration"
        );
        for text in migration.statements(&config.keyspace, &config.replication) {
            if column_exists(session, &config.keyspace, &text).await? {
                continue;
            }
            let mut statement = Statement::new(text);
            statement.set_request_timeout(Some(DDL_TIMEOUT));
            session
                .query_unpaged(statement, &[])
                .await
                .map_err(|error| MigrateError::Cluster {
                    action: format!("migration {:04}_{}", migration.version, migration.name),
                    message: error.to_string(),
                })?;
        }
        history::record(session, config, migration).await?;
        report.applied_now.push(migration.version);
    }
    // `IF NOT EXISTS` keeps a table that was there already, whatever its
    // columns: check what the statements left.
    verify::verify(session, &config.keyspace, &schema::expected(&known)?).await?;
    Ok(report)
}

/// Runs `query` (one page) and reads every row as `R`; a failure at any
/// step is a [`MigrateError::Cluster`] for `action`.
async fn select<R>(
    session: &Session,
    query: Statement,
    values: impl SerializeRow,
    action: &str,
) -> Result<Vec<R>, MigrateError>
where
    R: for<'frame, 'metadata> DeserializeRow<'frame, 'metadata>,
{
    session
        .query_unpaged(query, values)
        .await
        .map_err(|error| error.to_string())
        .and_then(|result| result.into_rows_result().map_err(|error| error.to_string()))
        .and_then(|rows| {
            rows.rows::<R>()
                .map_err(|error| error.to_string())?
                .map(|row| row.map_err(|error| error.to_string()))
                .collect()
        })
        .map_err(|message| MigrateError::Cluster {
            action: action.to_owned(),
            message,
        })
}

/// Returns whether `statement` adds a column the table already has: a run
/// interrupted between the statement and its record left it there.
async fn column_exists(
    session: &Session,
    keyspace: &str,
    statement: &str,
) -> Result<bool, MigrateError> {
    let Some((table, column)) = schema::added_column(statement) else {
        return Ok(false);
    };
    let found = verify::read_columns(session, keyspace).await?;
    Ok(found
        .iter()
        .any(|row| row.table == table && row.column == column))
}

/// Succeeds when every migration of this build is applied, and nothing
/// else, and the tables and columns are exactly the ones they create.
pub async fn check(session: &Session, config: &ScyllaConfig) -> Result<(), MigrateError> {
    let known = migrations()?;
    let applied = history::applied_migrations(session, config).await?;
    let pending = history::plan(&known, &applied)?;
    if pending.is_empty() {
        return verify::verify(session, &config.keyspace, &schema::expected(&known)?).await;
    }
    Err(MigrateError::Pending {
        keyspace: config.keyspace.clone(),
        pending: pending
            .iter()
            .map(|migration| format!("{:04}_{}", migration.version, migration.name))
            .collect::<Vec<_>>()
            .join(", "),
    })
}
