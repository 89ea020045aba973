//! The migration history: the `schema_migrations` table recording each
//! applied migration with its checksum, and the pure decision ([`plan`]) of
//! what is left to apply, unit-tested without a cluster. An applied
//! migration whose checksum differs from the file, an applied version this
//! build does not know, or a gap in the history refuses to go on; a keyspace
//! holding tables but no `schema_migrations` was not made by us and is left
//! alone.

use ::scylla::client::session::Session;
use ::scylla::statement::Statement;
use ::scylla::value::CqlTimestamp;

use super::MigrateError;
use super::files::Migration;
use crate::clock::unix_micros;
use crate::config::ScyllaConfig;
use crate::store::scylla::consistency::consistency;

/// The table recording applied migrations.
pub const HISTORY_TABLE: &str = "schema_migrations";

/// A migration recorded in `schema_migrations`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub version: u32,
    pub name: String,
    pub checksum: String,
}

/// Decides what to apply: returns the migrations still pending, in order,
/// or refuses when the recorded history does not match this build.
pub fn plan<'a>(
    known: &'a [Migration],
    applied: &[Applied],
) -> Result<Vec<&'a Migration>, MigrateError> {
    let latest = known.last().map_or(0, |migration| migration.version);
    let mut applied: Vec<&Applied> = applied.iter().collect();
    applied.sort_by_key(|applied| applied.version);
    for record in &applied {
        let Some(migration) = known.iter().find(|known| known.version == record.version) else {
            return Err(MigrateError::UnknownVersion {
                version: record.version,
                name: record.name.clone(),
                latest,
            });
        };
        let expected = migration.checksum();
        if record.checksum != expected {
            return Err(MigrateError::ChecksumMismatch {
                version: record.version,
                name: migration.name.to_owned(),
                applied: record.checksum.clone(),
                expected,
            });
        }
    }
    let highest_applied = applied.last().map_or(0, |record| record.version);
    let pending: Vec<&Migration> = known
        .iter()
        .filter(|migration| {
            !applied
                .iter()
                .any(|record| record.version == migration.version)
        })
        .collect();
    if let Some(missing) = pending
        .iter()
        .find(|migration| migration.version < highest_applied)
    {
        return Err(MigrateError::Gap {
            missing: missing.version,
        });
    }
    Ok(pending)
}

/// A history row as read: version, name, checksum.
type HistoryRow = (i32, Option<String>, Option<String>);
/// A history row as written: version, name, checksum, applied at.
type HistoryRecord<'a> = (i32, &'a str, String, CqlTimestamp);

fn history_select(keyspace: &str) -> String {
    format!("SELECT version, name, checksum FROM {keyspace}.{HISTORY_TABLE}")
}

fn history_insert(keyspace: &str) -> String {
    format!(
        "INSERT INTO {keyspace}.{HISTORY_TABLE} (version, name, checksum, applied_at) \
         VALUES (?, ?, ?, ?)"
    )
}

/// Reads the migration history; an absent keyspace, or one without tables,
/// has none.
pub async fn applied_migrations(
    session: &Session,
    config: &ScyllaConfig,
) -> Result<Vec<Applied>, MigrateError> {
    let mut tables_query =
        Statement::new("SELECT table_name FROM system_schema.tables WHERE keyspace_name = ?");
    tables_query.set_consistency(::scylla::statement::Consistency::One);
    let tables: Vec<String> = super::select::<(String,)>(
        session,
        tables_query,
        (config.keyspace.as_str(),),
        "reading the keyspace's tables",
    )
    .await?
    .into_iter()
    .map(|(name,)| name)
    .collect();
    if !tables.iter().any(|table| table == HISTORY_TABLE) {
        if tables.is_empty() {
            return Ok(Vec::new());
        }
        let mut tables = tables;
        tables.sort();
        return Err(MigrateError::Unmanaged {
            keyspace: config.keyspace.clone(),
            tables: tables.join(", "),
        });
    }

    let mut history_query = Statement::new(history_select(&config.keyspace));
    history_query.set_consistency(consistency(config.read_consistency));
    let rows: Vec<HistoryRow> =
        super::select(session, history_query, &[], "reading the migration history").await?;
    Ok(rows
        .into_iter()
        .map(|(version, name, checksum)| Applied {
            // A negative version is no version of ours: it is reported as
            // unknown (as version 0) rather than silently skipped.
            version: u32::try_from(version).unwrap_or(0),
            name: name.unwrap_or_default(),
            checksum: checksum.unwrap_or_default(),
        })
        .collect())
}

/// Records an applied migration.
pub async fn record(
    session: &Session,
    config: &ScyllaConfig,
    migration: &Migration,
) -> Result<(), MigrateError> {
    let mut statement = Statement::new(history_insert(&config.keyspace));
    statement.set_consistency(consistency(config.write_consistency));
    let version = i32::try_from(migration.version).unwrap_or(i32::MAX);
    let applied_at = CqlTimestamp(i64::try_from(unix_micros() / 1_000).unwrap_or(i64::MAX));
    let values: HistoryRecord<'_> = (version, migration.name, migration.checksum(), applied_at);
    session
        .query_unpaged(statement, values)
        .await
        .map_err(|error| MigrateError::Cluster {
            action: format!("recording migration {:04}", migration.version),
            message: error.to_string(),
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::scylla::migrate::files::migration;

    fn applied(migration: &Migration) -> Applied {
        Applied {
            version: migration.version,
            name: migration.name.to_owned(),
            checksum: migration.checksum(),
        }
    }

    #[test]
    fn plan_applies_what_is_missing_in_order_and_nothing_twice() {
        let known = [migration(1, "A;"), migration(2, "B;"), migration(3, "C;")];
        let versions = |pending: Vec<&Migration>| -> Vec<u32> {
            pending.iter().map(|migration| migration.version).collect()
        };
        assert_eq!(versions(plan(&known, &[]).unwrap()), [1, 2, 3]);
        let first = [applied(&known[0])];
        assert_eq!(versions(plan(&known, &first).unwrap()), [2, 3]);
        let all: Vec<Applied> = known.iter().map(applied).collect();
        assert!(
            plan(&known, &all).unwrap().is_empty(),
            "re-running is a no-op"
        );
        let mut reversed = all.clone();
        reversed.reverse();
        assert!(plan(&known, &reversed).unwrap().is_empty());
    }

    #[test]
    fn the_history_statements_match_the_history_table() {
        use ::scylla::deserialize::row::DeserializeRow;

        use crate::store::scylla::bind_check::{markers, schema_types, serializes, specs};
        let types = schema_types();
        let insert = history_insert("ks");
        let names = markers(&insert);
        assert_eq!(names, ["version", "name", "checksum", "applied_at"]);
        let record: HistoryRecord<'_> = (1, "keyspace", "00".to_owned(), CqlTimestamp(0));
        serializes(&record, &specs(&types, HISTORY_TABLE, &names)).unwrap();
        let select = history_select("ks");
        assert_eq!(
            select,
            "SELECT version, name, checksum FROM ks.schema_migrations"
        );
        let selected = ["version", "name", "checksum"].map(str::to_owned);
        <HistoryRow as DeserializeRow>::type_check(&specs(&types, HISTORY_TABLE, &selected))
            .unwrap();
    }

    #[test]
    fn plan_refuses_edited_unknown_or_inconsistent_histories() {
        let known = [migration(1, "A;"), migration(2, "B;")];

        let mut edited = applied(&known[0]);
        edited.checksum = "0000000000000000".to_owned();
        let error = plan(&known, &[edited]).unwrap_err();
        assert!(matches!(
            error,
            MigrateError::ChecksumMismatch { version: 1, .. }
        ));
        assert!(
            error.to_string().contains("must never be edited"),
            "{error}"
        );

        let newer = Applied {
            version: 3,
            name: "from_the_future".to_owned(),
            checksum: "x".to_owned(),
        };
        let error = plan(&known, &[applied(&known[0]), applied(&known[1]), newer]).unwrap_err();
        assert!(
            matches!(
                error,
                MigrateError::UnknownVersion {
                    version: 3,
                    latest: 2,
                    ..
                }
            ),
            "{error}"
        );
        assert!(error.to_string().contains("newer readstates"), "{error}");

        let error = plan(&known, &[applied(&known[1])]).unwrap_err();
        assert!(matches!(error, MigrateError::Gap { missing: 1 }), "{error}");
    }
}
