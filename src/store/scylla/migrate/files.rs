//! The migration files: the versioned `.cql` files of `migrations/`,
//! embedded in the binary, validated, checksummed and split into
//! statements with their placeholders filled in.
//!
//! A file is `NNNN_name.cql`: statements separated by `;`, `--` comments,
//! and the placeholders `{keyspace}` and `{replication}`. The checksum is
//! taken over the file as written (placeholders unfilled), so changing the
//! configured replication later does not make an applied migration look
//! edited.

use super::MigrateError;

/// The migration files, in the binary so it needs no files at run time.
/// A unit test checks this list against the `migrations/` directory.
const FILES: [(&str, &str); 5] = [
    (
        "0001_keyspace.cql",
        include_str!("../../../../migrations/0001_keyspace.cql"),
    ),
    (
        "0002_read_states.cql",
        include_str!("../../../../migrations/0002_read_states.cql"),
    ),
    (
        "0003_meta.cql",
        include_str!("../../../../migrations/0003_meta.cql"),
    ),
    (
        "0004_delete_markers.cql",
        include_str!("../../../../migrations/0004_delete_markers.cql"),
    ),
    (
        "0005_cluster.cql",
        include_str!("../../../../migrations/0005_cluster.cql"),
    ),
];

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

/// Splits a migration file into statements: `;` ends a statement outside
/// single-quoted strings, and `--` or `//` start a comment running to the
/// end of the line.
pub(super) fn split_statements(text: &str) -> Vec<String> {
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

/// A migration named `test`, for the migration tests.
#[cfg(test)]
pub(super) fn migration(version: u32, text: &'static str) -> Migration {
    Migration {
        version,
        name: "test",
        text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::scylla::migrate::schema::added_column;

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
        assert_eq!(versions, [1, 2, 3, 4, 5]);
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
        assert_eq!(all.len(), 7);
        assert!(all[0].starts_with("CREATE KEYSPACE IF NOT EXISTS ks_test"));
        assert!(all[0].contains(replication));
        assert!(all[1].starts_with("CREATE TABLE IF NOT EXISTS ks_test.schema_migrations"));
        assert!(all[2].starts_with("CREATE TABLE IF NOT EXISTS ks_test.read_states"));
        assert!(all[2].contains("PRIMARY KEY ((user_id), channel_id)"));
        assert!(all[2].contains("user_version bigint static"));
        assert!(all[3].starts_with("CREATE TABLE IF NOT EXISTS ks_test.meta"));
        assert_eq!(
            all[4],
            "ALTER TABLE ks_test.read_states ADD deleted boolean"
        );
        assert!(all[5].starts_with("CREATE TABLE IF NOT EXISTS ks_test.slot_leases"));
        assert!(all[6].starts_with("CREATE TABLE IF NOT EXISTS ks_test.cluster_members"));
        for statement in &all {
            // An added column is skipped when it exists (see `apply`).
            assert!(
                statement.contains("IF NOT EXISTS") || added_column(statement).is_some(),
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
}
