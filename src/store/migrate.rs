//! Schema migrations of the Scylla store: the versioned `.cql` files of
//! `migrations/`, embedded in the binary, applied in order and recorded in
//! the keyspace's `schema_migrations` table.
//!
//! A file is `NNNN_name.cql`: statements separated by `;`, `--` comments,
//! and the placeholders `{keyspace}` and `{replication}`. Statements are
//! written to be re-runnable (`IF NOT EXISTS`), so a run interrupted between
//! a statement and its record is finished by the next run. The checksum is
//! taken over the file as written (placeholders unfilled), so changing the
//! configured replication later does not make an applied migration look
//! edited; replication of an existing keyspace is an operator's `ALTER`.
//!
//! The decisions are pure functions ([`plan`]) so they are unit-tested
//! without a cluster: an applied migration whose checksum differs from the
//! file, an applied version this build does not know, or a gap in the
//! history refuses to go on; a keyspace holding tables but no
//! `schema_migrations` was not made by us and is left alone.

use std::time::Duration;

use ::scylla::client::session::Session;
use ::scylla::statement::Statement;
use ::scylla::value::CqlTimestamp;

use crate::clock::unix_micros;
use crate::config::ScyllaConfig;

/// The migration files, in the binary so it needs no files at run time.
/// A unit test checks this list against the `migrations/` directory.
const FILES: [(&str, &str); 3] = [
    (
        "0001_keyspace.cql",
        include_str!("../../migrations/0001_keyspace.cql"),
    ),
    (
        "0002_read_states.cql",
        include_str!("../../migrations/0002_read_states.cql"),
    ),
    (
        "0003_meta.cql",
        include_str!("../../migrations/0003_meta.cql"),
    ),
];

/// The table recording applied migrations.
pub const HISTORY_TABLE: &str = "schema_migrations";

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
    /// The schema is behind this build.
    #[error(
        "keyspace {keyspace} lacks migrations {pending}: run `readstates migrate --config <file>` \
         (or set scylla.migrate_on_start = true)"
    )]
    Pending { keyspace: String, pending: String },
}

/// One migration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migration {
    /// The number the file name starts with.
    pub version: u32,
    /// The file name without the number and `.cql`.
    pub name: &'static str,
    /// The file's text, placeholders unfilled.
    pub text: &'static str,
}

/// A migration recorded in `schema_migrations`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub version: u32,
    pub name: String,
    pub checksum: String,
}

/// What a migration run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrationReport {
    /// Versions that were already applied.
    pub already_applied: Vec<u32>,
    /// Versions applied by this run, in order.
    pub applied_now: Vec<u32>,
}

impl Migration {
    /// Returns the checksum recorded for this file: FNV-1a (64 bit) over the
    /// text with line endings normalised, as 16 hex digits. It detects
    /// edits, not tampering.
    pub fn checksum(&self) -> String {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in self.text.bytes().filter(|byte| *byte != b'\r') {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        format!("{hash:016x}")
    }

    /// Returns the file's statements with the placeholders filled in.
    /// `keyspace` must already be a validated identifier.
    pub fn statements(&self, keyspace: &str, replication: &str) -> Vec<String> {
        split_statements(self.text)
            .into_iter()
            .map(|statement| {
                statement
                    .replace("{keyspace}", keyspace)
                    .replace("{replication}", replication)
            })
            .collect()
    }
}

/// Returns the embedded migrations in version order, checking that their
/// names are well formed and their versions run 1, 2, 3, ... without gaps.
pub fn migrations() -> Result<Vec<Migration>, MigrateError> {
    parse_files(&FILES)
}

fn parse_files(files: &[(&'static str, &'static str)]) -> Result<Vec<Migration>, MigrateError> {
    let mut migrations = Vec::with_capacity(files.len());
    for (file, text) in files {
        let bad = |reason| MigrateError::BadFile {
            file: (*file).to_owned(),
            reason,
        };
        let stem = file
            .strip_suffix(".cql")
            .ok_or_else(|| bad("the name must end in .cql"))?;
        let (number, name) = stem
            .split_once('_')
            .ok_or_else(|| bad("the name must be NNNN_name.cql"))?;
        if number.len() != 4 || !number.bytes().all(|byte| byte.is_ascii_digit()) {
            return Err(bad("the name must start with a four-digit version"));
        }
        let version: u32 = number
            .parse()
            .map_err(|_| bad("the version is not a number"))?;
        if name.is_empty()
            || !name
                .bytes()
                .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'_')
        {
            return Err(bad("the name must be lowercase letters, digits and _"));
        }
        if split_statements(text).is_empty() {
            return Err(bad("the file holds no statement"));
        }
        migrations.push(Migration {
            version,
            name,
            text,
        });
    }
    migrations.sort_by_key(|migration| migration.version);
    for (index, migration) in migrations.iter().enumerate() {
        if usize::try_from(migration.version).ok() != Some(index + 1) {
            return Err(MigrateError::BadFile {
                file: format!("{:04}_{}.cql", migration.version, migration.name),
                reason: "versions must run 1, 2, 3, ... with no gap or repeat",
            });
        }
    }
    Ok(migrations)
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

/// Splits a migration file into statements: `;` ends a statement outside
/// single-quoted strings, and `--` or `//` start a comment running to the
/// end of the line.
fn split_statements(text: &str) -> Vec<String> {
    let mut statements = Vec::new();
    let mut current = String::new();
    let mut in_string = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if in_string {
            current.push(c);
            if c == '\'' {
                in_string = false;
            }
            continue;
        }
        match c {
            '\'' => {
                in_string = true;
                current.push(c);
            }
            '-' | '/' if chars.peek() == Some(&c) => {
                for skipped in chars.by_ref() {
                    if skipped == '\n' {
                        current.push('\n');
                        break;
                    }
                }
            }
            ';' => {
                push_statement(&mut statements, &current);
                current.clear();
            }
            _ => current.push(c),
        }
    }
    push_statement(&mut statements, &current);
    statements
}

fn push_statement(statements: &mut Vec<String>, text: &str) {
    let statement = text
        .lines()
        .map(str::trim_end)
        .filter(|line| !line.trim().is_empty())
        .collect::<Vec<_>>()
        .join("\n");
    if !statement.is_empty() {
        statements.push(statement);
    }
}

/// Applies every pending migration in order and records each one.
pub async fn apply(
    session: &Session,
    config: &ScyllaConfig,
) -> Result<MigrationReport, MigrateError> {
    let known = migrations()?;
    let applied = applied_migrations(session, config).await?;
    let pending = plan(&known, &applied)?;
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
        record(session, config, migration).await?;
        report.applied_now.push(migration.version);
    }
    Ok(report)
}

/// Succeeds when every migration of this build is applied, and nothing else.
pub async fn check(session: &Session, config: &ScyllaConfig) -> Result<(), MigrateError> {
    let known = migrations()?;
    let applied = applied_migrations(session, config).await?;
    let pending = plan(&known, &applied)?;
    if pending.is_empty() {
        return Ok(());
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
async fn applied_migrations(
    session: &Session,
    config: &ScyllaConfig,
) -> Result<Vec<Applied>, MigrateError> {
    let cluster = |action: &str| {
        let action = action.to_owned();
        move |error: String| MigrateError::Cluster {
            action,
            message: error,
        }
    };
    let mut tables_query =
        Statement::new("SELECT table_name FROM system_schema.tables WHERE keyspace_name = ?");
    tables_query.set_consistency(::scylla::statement::Consistency::One);
    let tables: Vec<String> = session
        .query_unpaged(tables_query, (config.keyspace.as_str(),))
        .await
        .map_err(|error| error.to_string())
        .and_then(|result| result.into_rows_result().map_err(|error| error.to_string()))
        .and_then(|rows| {
            rows.rows::<(String,)>()
                .map_err(|error| error.to_string())?
                .map(|row| row.map(|(name,)| name).map_err(|error| error.to_string()))
                .collect()
        })
        .map_err(cluster("reading the keyspace's tables"))?;
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
    history_query.set_consistency(super::scylla::consistency(config.read_consistency));
    let rows: Vec<HistoryRow> = session
        .query_unpaged(history_query, &[])
        .await
        .map_err(|error| error.to_string())
        .and_then(|result| result.into_rows_result().map_err(|error| error.to_string()))
        .and_then(|rows| {
            rows.rows::<HistoryRow>()
                .map_err(|error| error.to_string())?
                .map(|row| row.map_err(|error| error.to_string()))
                .collect()
        })
        .map_err(cluster("reading the migration history"))?;
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
async fn record(
    session: &Session,
    config: &ScyllaConfig,
    migration: &Migration,
) -> Result<(), MigrateError> {
    let mut statement = Statement::new(history_insert(&config.keyspace));
    statement.set_consistency(super::scylla::consistency(config.write_consistency));
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

/// Checks statements and Rust value types against the column types the
/// migrations create, without a cluster.
#[cfg(test)]
pub(crate) mod schema_check {
    use std::collections::HashMap;

    use ::scylla::frame::response::result::{
        CollectionType, ColumnSpec, ColumnType, NativeType, TableSpec,
    };
    use ::scylla::serialize::SerializationError;
    use ::scylla::serialize::row::{RowSerializationContext, SerializeRow};
    use ::scylla::serialize::writers::RowWriter;

    /// The CQL type of every column, read from the migrations' `CREATE
    /// TABLE` statements, so these tests check the statements and the Rust
    /// value types against the schema the cluster will really have.
    pub fn schema_types() -> HashMap<String, ColumnType<'static>> {
        let mut types = HashMap::new();
        for migration in super::migrations().unwrap() {
            for statement in migration.statements("ks", "{'class': 'SimpleStrategy'}") {
                let Some((head, body)) = statement.split_once('(') else {
                    continue;
                };
                let Some(table) = head.trim().strip_prefix("CREATE TABLE IF NOT EXISTS ks.") else {
                    continue;
                };
                for line in body.lines() {
                    if line.trim().starts_with(')') {
                        break; // the table options
                    }
                    let mut words = line.trim().trim_end_matches(',').split_whitespace();
                    let (Some(column), Some(typ)) = (words.next(), words.next()) else {
                        continue;
                    };
                    if column == "PRIMARY" {
                        continue;
                    }
                    let typ = match typ {
                        "bigint" => ColumnType::Native(NativeType::BigInt),
                        "int" => ColumnType::Native(NativeType::Int),
                        "text" => ColumnType::Native(NativeType::Text),
                        "timestamp" => ColumnType::Native(NativeType::Timestamp),
                        "frozen<list<bigint>>" => ColumnType::Collection {
                            frozen: true,
                            typ: CollectionType::List(Box::new(ColumnType::Native(
                                NativeType::BigInt,
                            ))),
                        },
                        other => panic!("add {other} to this test"),
                    };
                    types.insert(format!("{table}.{column}"), typ);
                }
            }
        }
        // A USING TIMESTAMP marker is a bigint.
        types.insert(
            "[timestamp]".to_owned(),
            ColumnType::Native(NativeType::BigInt),
        );
        types
    }

    /// Names the bind markers of a statement, in order, from its text.
    pub fn markers(text: &str) -> Vec<String> {
        let insert_columns: Vec<&str> = text
            .split_once('(')
            .filter(|_| text.starts_with("INSERT"))
            .and_then(|(_, rest)| rest.split_once(')'))
            .map(|(columns, _)| columns.split(',').map(str::trim).collect())
            .unwrap_or_default();
        let mut names = Vec::new();
        let mut values_seen = 0;
        for (position, _) in text.match_indices('?') {
            let before = text[..position].trim_end();
            let name = if before.ends_with("TIMESTAMP") {
                "[timestamp]".to_owned()
            } else if let Some(left) = before.strip_suffix('=') {
                left.split_whitespace().last().unwrap().to_owned()
            } else {
                values_seen += 1;
                insert_columns[values_seen - 1].to_owned()
            };
            names.push(name);
        }
        names
    }

    pub fn specs<'a>(
        types: &HashMap<String, ColumnType<'static>>,
        table: &str,
        names: &[String],
    ) -> Vec<ColumnSpec<'a>> {
        names
            .iter()
            .map(|name| {
                let typ = types
                    .get(&format!("{table}.{name}"))
                    .or_else(|| types.get(name))
                    .unwrap_or_else(|| panic!("no column {table}.{name} in the migrations"))
                    .clone();
                ColumnSpec::owned(
                    name.clone(),
                    typ,
                    TableSpec::owned("ks".to_owned(), table.to_owned()),
                )
            })
            .collect()
    }

    pub fn serializes(
        values: &impl SerializeRow,
        specs: &[ColumnSpec<'_>],
    ) -> Result<usize, SerializationError> {
        let mut buffer = Vec::new();
        let mut writer = RowWriter::new(&mut buffer);
        values.serialize(&RowSerializationContext::from_specs(specs), &mut writer)?;
        Ok(writer.value_count())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn migration(version: u32, text: &'static str) -> Migration {
        Migration {
            version,
            name: "test",
            text,
        }
    }

    fn applied(migration: &Migration) -> Applied {
        Applied {
            version: migration.version,
            name: migration.name.to_owned(),
            checksum: migration.checksum(),
        }
    }

    #[test]
    fn the_embedded_files_are_every_file_in_the_directory_in_order() {
        let directory = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        let mut on_disk: Vec<String> = std::fs::read_dir(&directory)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .filter(|name| name.ends_with(".cql"))
            .collect();
        on_disk.sort();
        let embedded: Vec<&str> = FILES.iter().map(|(file, _)| *file).collect();
        assert_eq!(on_disk, embedded, "embed every migrations/*.cql in FILES");
        for (file, text) in FILES {
            let on_disk = std::fs::read_to_string(directory.join(file)).unwrap();
            assert_eq!(on_disk, text);
        }

        let known = migrations().unwrap();
        let versions: Vec<u32> = known.iter().map(|migration| migration.version).collect();
        assert_eq!(versions, [1, 2, 3]);
        assert_eq!(known[1].name, "read_states");
    }

    #[test]
    fn templating_fills_every_placeholder() {
        let replication = "{'class': 'NetworkTopologyStrategy', 'dc1': 1}";
        let known = migrations().unwrap();
        let mut all = Vec::new();
        for migration in &known {
            let statements = migration.statements("ks_test", replication);
            assert!(!statements.is_empty());
            for statement in &statements {
                assert!(!statement.contains("{keyspace}"), "{statement}");
                assert!(!statement.contains("{replication}"), "{statement}");
                assert!(
                    !statement.contains("--"),
                    "comments are stripped: {statement}"
                );
                assert!(!statement.contains(';'), "{statement}");
            }
            all.extend(statements);
        }
        assert_eq!(all.len(), 4);
        assert!(all[0].starts_with("CREATE KEYSPACE IF NOT EXISTS ks_test"));
        assert!(all[0].contains(replication));
        assert!(all[1].starts_with("CREATE TABLE IF NOT EXISTS ks_test.schema_migrations"));
        assert!(all[2].starts_with("CREATE TABLE IF NOT EXISTS ks_test.read_states"));
        assert!(all[2].contains("PRIMARY KEY ((user_id), channel_id)"));
        assert!(all[2].contains("user_version bigint static"));
        assert!(all[3].starts_with("CREATE TABLE IF NOT EXISTS ks_test.meta"));
        for statement in &all {
            assert!(
                statement.contains("IF NOT EXISTS"),
                "re-runnable: {statement}"
            );
        }
    }

    #[test]
    fn statements_split_on_semicolons_outside_strings_and_comments() {
        let text = "-- a comment; with a semicolon\n\
                    CREATE TABLE a (x int PRIMARY KEY) WITH comment = 'x;y';\n\
                    // another; comment\n\
                    INSERT INTO a (x) VALUES (1) -- trailing; comment\n;\n  \n";
        assert_eq!(
            split_statements(text),
            [
                "CREATE TABLE a (x int PRIMARY KEY) WITH comment = 'x;y'",
                "INSERT INTO a (x) VALUES (1)",
            ]
        );
        assert!(split_statements("-- only a comment\n").is_empty());
    }

    #[test]
    fn checksums_are_stable_and_see_edits_but_not_line_endings() {
        let known = migrations().unwrap();
        for migration in &known {
            assert_eq!(migration.checksum(), migration.checksum());
            assert_eq!(migration.checksum().len(), 16);
        }
        let a = migration(1, "CREATE TABLE x (a int PRIMARY KEY);\n");
        let b = migration(1, "CREATE TABLE x (a bigint PRIMARY KEY);\n");
        let crlf = migration(1, "CREATE TABLE x (a int PRIMARY KEY);\r\n");
        assert_ne!(a.checksum(), b.checksum());
        assert_eq!(a.checksum(), crlf.checksum());
        // FNV-1a of the empty input is its offset basis: pins the algorithm.
        assert_eq!(migration(1, "").checksum(), "cbf29ce484222325");
    }

    #[test]
    fn file_names_and_versions_are_validated() {
        let bad = [
            vec![("0001_a.sql", "SELECT 1;")],
            vec![("1_a.cql", "SELECT 1;")],
            vec![("0001-a.cql", "SELECT 1;")],
            vec![("0001_A.cql", "SELECT 1;")],
            vec![("0001_a.cql", "-- nothing\n")],
            vec![("0002_a.cql", "SELECT 1;")],
            vec![("0001_a.cql", "SELECT 1;"), ("0001_b.cql", "SELECT 1;")],
            vec![("0001_a.cql", "SELECT 1;"), ("0003_b.cql", "SELECT 1;")],
        ];
        for files in bad {
            assert!(
                matches!(parse_files(&files), Err(MigrateError::BadFile { .. })),
                "{files:?}"
            );
        }
        let unordered =
            parse_files(&[("0002_b.cql", "SELECT 2;"), ("0001_a.cql", "SELECT 1;")]).unwrap();
        assert_eq!(unordered[0].name, "a");
        assert_eq!(unordered[1].name, "b");
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

        use super::schema_check::{markers, schema_types, serializes, specs};
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
