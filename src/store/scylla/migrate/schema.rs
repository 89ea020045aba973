//! The schema the migrations create: every table with its columns, their
//! CQL types and kinds, read from the migrations' own statements so it is
//! declared once, in `migrations/`.
//!
//! The reading understands the statements a migration may use to shape
//! tables: `CREATE TABLE`, `ALTER TABLE ... ADD` / `DROP` / `WITH`, and
//! `DROP TABLE`. Any other statement that would create or change a table,
//! type, index or view is refused as a malformed file, so a migration this
//! reading cannot follow fails the unit tests instead of passing the
//! start-up check unverified.

use std::collections::BTreeMap;
use std::fmt;

use super::MigrateError;
use super::files::Migration;

/// The tables of a keyspace, by name.
pub type Schema = BTreeMap<String, Table>;

/// A table's columns, by name.
pub type Table = BTreeMap<String, Column>;

/// One column as `system_schema.columns` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// The CQL type, lowercase and without spaces (`frozen<list<bigint>>`).
    pub cql_type: String,
    pub kind: ColumnKind,
}

/// A column's role in its table, as `system_schema.columns.kind` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnKind {
    PartitionKey,
    Clustering,
    Regular,
    Static,
}

impl ColumnKind {
    /// Returns the kind as `system_schema.columns` spells it.
    pub fn name(self) -> &'static str {
        match self {
            ColumnKind::PartitionKey => "partition_key",
            ColumnKind::Clustering => "clustering",
            ColumnKind::Regular => "regular",
            ColumnKind::Static => "static",
        }
    }
}

impl fmt::Display for Column {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            ColumnKind::Regular => write!(f, "{}", self.cql_type),
            kind => write!(f, "{} {}", self.cql_type, kind.name()),
        }
    }
}

/// Returns a CQL type as `system_schema.columns` writes it: lowercase,
/// without spaces.
pub fn normalise_type(cql_type: &str) -> String {
    cql_type
        .chars()
        .filter(|c| !c.is_whitespace())
        .flat_map(char::to_lowercase)
        .collect()
}

/// Returns the schema that applying `migrations` in order creates.
pub fn expected(migrations: &[Migration]) -> Result<Schema, MigrateError> {
    let mut schema = Schema::new();
    for migration in migrations {
        let file = format!("{:04}_{}.cql", migration.version, migration.name);
        for statement in migration.statements(KEYSPACE, "{}") {
            apply(&mut schema, &statement).map_err(|reason| MigrateError::BadFile {
                file: file.clone(),
                reason,
            })?;
        }
    }
    Ok(schema)
}

/// The keyspace the statements are read with, stripped from table names.
const KEYSPACE: &str = "ks";

/// Applies one statement's effect on the tables.
fn apply(schema: &mut Schema, statement: &str) -> Result<(), &'static str> {
    let words: Vec<&str> = statement.split_whitespace().collect();
    let upper: Vec<String> = words.iter().map(|word| word.to_ascii_uppercase()).collect();
    let upper: Vec<&str> = upper.iter().map(String::as_str).collect();
    match upper.as_slice() {
        ["CREATE", "KEYSPACE", ..] | ["ALTER", "KEYSPACE", ..] => Ok(()),
        ["CREATE", "TABLE", ..] => {
            let (name, table) = create_table(statement)?;
            schema.insert(name, table);
            Ok(())
        }
        ["DROP", "TABLE", "IF", "EXISTS", _] | ["DROP", "TABLE", _] => {
            let name = table_name(words[words.len() - 1])?;
            schema.remove(&name);
            Ok(())
        }
        ["ALTER", "TABLE", _, "WITH", ..] => Ok(()),
        ["ALTER", "TABLE", _, "ADD", _, _, ..] => {
            let table = schema
                .get_mut(&table_name(words[2])?)
                .ok_or("ALTER TABLE names a table no earlier migration creates")?;
            let (column, definition) = column_definition(&words[4..].join(" "))?;
            table.insert(column, definition);
            Ok(())
        }
        ["ALTER", "TABLE", _, "DROP", _] => {
            let table = schema
                .get_mut(&table_name(words[2])?)
                .ok_or("ALTER TABLE names a table no earlier migration creates")?;
            table
                .remove(words[4])
                .ok_or("ALTER TABLE DROP names a column the table does not have")?;
            Ok(())
        }
        ["CREATE" | "ALTER" | "DROP", ..] => Err(
            "the start-up schema check cannot follow this statement; teach \
             store/scylla/migrate/schema.rs its effect on tables",
        ),
        _ => Ok(()),
    }
}

/// Returns the table (without its keyspace) and the column an `ALTER TABLE
/// ks.name ADD column type` statement adds, and `None` for any other
/// statement. Such a statement has no `IF NOT EXISTS` in CQL common to
/// ScyllaDB and Cassandra 4.0, so the migration run skips it when the
/// column is already there (a run interrupted before its record).
pub fn added_column(statement: &str) -> Option<(String, String)> {
    let words: Vec<&str> = statement.split_whitespace().collect();
    match words.as_slice() {
        [alter, table, qualified, add, column, _, ..]
            if alter.eq_ignore_ascii_case("ALTER")
                && table.eq_ignore_ascii_case("TABLE")
                && add.eq_ignore_ascii_case("ADD") =>
        {
            let name = qualified.rsplit('.').next().unwrap_or(qualified);
            Some((name.to_owned(), (*column).to_owned()))
        }
        _ => None,
    }
}

/// Reads `CREATE TABLE [IF NOT EXISTS] ks.name (columns, PRIMARY KEY (...))
/// [WITH ...]`.
fn create_table(statement: &str) -> Result<(String, Table), &'static str> {
    let (head, rest) = statement
        .split_once('(')
        .ok_or("CREATE TABLE without a column list")?;
    let name = table_name(head.split_whitespace().last().unwrap_or_default())?;
    let body = until_closing_paren(rest).ok_or("CREATE TABLE with unbalanced parentheses")?;
    let mut table = Table::new();
    let mut primary_key = None;
    for element in split_top_level(body) {
        let upper = element.to_ascii_uppercase();
        if let Some(key) = upper.strip_prefix("PRIMARY KEY") {
            let key = &element[element.len() - key.len()..];
            primary_key = Some(key.trim().to_owned());
            continue;
        }
        let (column, definition) = column_definition(element)?;
        if definition.kind == ColumnKind::PartitionKey {
            primary_key = Some(format!("({column})"));
        }
        table.insert(column, definition);
    }
    let primary_key = primary_key.ok_or("CREATE TABLE without a primary key")?;
    mark_primary_key(&mut table, &primary_key)?;
    Ok((name, table))
}

/// Reads `name type [static | PRIMARY KEY]` (the kind is regular, static,
/// or a partition key when the column is the whole primary key).
fn column_definition(text: &str) -> Result<(String, Column), &'static str> {
    let mut words: Vec<&str> = text.split_whitespace().collect();
    if words.len() < 2 {
        return Err("a column needs a name and a type");
    }
    let column = words.remove(0).to_owned();
    let mut kind = ColumnKind::Regular;
    let upper: Vec<String> = words.iter().map(|word| word.to_ascii_uppercase()).collect();
    if upper.ends_with(&["PRIMARY".to_owned(), "KEY".to_owned()]) {
        kind = ColumnKind::PartitionKey;
        words.truncate(words.len() - 2);
    } else if upper.last().map(String::as_str) == Some("STATIC") {
        kind = ColumnKind::Static;
        words.pop();
    }
    if words.is_empty() {
        return Err("a column needs a type");
    }
    let cql_type = normalise_type(&words.join(" "));
    Ok((column, Column { cql_type, kind }))
}

/// Marks the key columns of `PRIMARY KEY ((p1, p2), c1, c2)` or
/// `PRIMARY KEY (p, c1)`.
fn mark_primary_key(table: &mut Table, key: &str) -> Result<(), &'static str> {
    let inner = key
        .trim()
        .strip_prefix('(')
        .and_then(|rest| rest.strip_suffix(')'))
        .ok_or("PRIMARY KEY must be parenthesised")?;
    let parts = split_top_level(inner);
    let (partition, clustering) = parts.split_first().ok_or("an empty PRIMARY KEY")?;
    let partition = partition
        .trim()
        .trim_start_matches('(')
        .trim_end_matches(')');
    let mut mark = |column: &str, kind| {
        table
            .get_mut(column.trim())
            .map(|definition| definition.kind = kind)
            .ok_or("PRIMARY KEY names a column the table does not have")
    };
    for column in partition.split(',') {
        mark(column, ColumnKind::PartitionKey)?;
    }
    for column in clustering {
        mark(column, ColumnKind::Clustering)?;
    }
    Ok(())
}

/// Returns `ks.name` without the keyspace.
fn table_name(qualified: &str) -> Result<String, &'static str> {
    qualified
        .strip_prefix(KEYSPACE)
        .and_then(|rest| rest.strip_prefix('.'))
        .map(str::to_owned)
        .ok_or("a table must be named {keyspace}.name")
}

/// Returns the text up to the parenthesis closing the one just opened.
fn until_closing_paren(text: &str) -> Option<&str> {
    let mut depth = 1;
    for (index, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return Some(&text[..index]);
                }
            }
            _ => {}
        }
    }
    None
}

/// Splits on commas outside parentheses and angle brackets.
fn split_top_level(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0_i32;
    let mut start = 0;
    for (index, c) in text.char_indices() {
        match c {
            '(' | '<' => depth += 1,
            ')' | '>' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(text[start..index].trim());
                start = index + 1;
            }
            _ => {}
        }
    }
    parts.push(text[start..].trim());
    parts.retain(|part| !part.is_empty());
    parts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::scylla::migrate::files::migration as test_migration;
    use crate::store::scylla::migrate::migrations;

    fn column(cql_type: &str, kind: ColumnKind) -> Column {
        Column {
            cql_type: cql_type.to_owned(),
            kind,
        }
    }

    #[test]
    fn the_migrations_create_the_tables_the_store_uses() {
        let schema = expected(&migrations().unwrap()).unwrap();
        let tables: Vec<&str> = schema.keys().map(String::as_str).collect();
        assert_eq!(
            tables,
            [
                "cluster_members",
                "meta",
                "read_states",
                "schema_migrations",
                "slot_leases"
            ]
        );
        let states = &schema["read_states"];
        assert_eq!(
            states["user_id"],
            column("bigint", ColumnKind::PartitionKey)
        );
        assert_eq!(
            states["channel_id"],
            column("bigint", ColumnKind::Clustering)
        );
        assert_eq!(
            states["pending_mentions"],
            column("frozen<list<bigint>>", ColumnKind::Regular)
        );
        assert_eq!(states["user_version"], column("bigint", ColumnKind::Static));
        assert_eq!(states["untracked_mentions"].cql_type, "int");
        assert_eq!(states["deleted"], column("boolean", ColumnKind::Regular));
        assert_eq!(states.len(), 11);
        assert_eq!(
            schema["schema_migrations"]["version"],
            column("int", ColumnKind::PartitionKey)
        );
        assert_eq!(
            schema["schema_migrations"]["applied_at"].cql_type,
            "timestamp"
        );
        assert_eq!(
            schema["meta"]["name"],
            column("text", ColumnKind::PartitionKey)
        );
        assert_eq!(schema["meta"].len(), 2);
        let leases = &schema["slot_leases"];
        assert_eq!(leases["slot"], column("int", ColumnKind::PartitionKey));
        assert_eq!(leases["owner"], column("text", ColumnKind::Regular));
        assert_eq!(leases["incarnation"].cql_type, "bigint");
        assert_eq!(leases.len(), 4);
        let members = &schema["cluster_members"];
        assert_eq!(members["member"], column("text", ColumnKind::PartitionKey));
        assert_eq!(members.len(), 3);
    }

    #[test]
    fn later_migrations_add_drop_and_remove_columns_and_tables() {
        let files = [
            (
                1,
                "CREATE TABLE IF NOT EXISTS {keyspace}.t (\n  a bigint,\n  b text,\n  \
                 m map<text, int>,\n  c int,\n  PRIMARY KEY ((a, b), c)\n) WITH comment = 'x';\n\
                 CREATE TABLE {keyspace}.gone (k int PRIMARY KEY);",
            ),
            (
                2,
                "ALTER TABLE {keyspace}.t ADD s Frozen<Set<text>> static;\n\
                 ALTER TABLE {keyspace}.t DROP c2_missing_is_an_error;",
            ),
        ];
        let migration = |(version, text)| test_migration(version, text);
        let error = expected(&files.map(migration)).unwrap_err();
        assert!(error.to_string().contains("0002_test.cql"), "{error}");

        let files = [
            files[0],
            (
                2,
                "ALTER TABLE {keyspace}.t ADD s Frozen<Set<text>> static;\n\
                 ALTER TABLE {keyspace}.t DROP b_unused;\n\
                 ALTER TABLE {keyspace}.t WITH gc_grace_seconds = 3600;\n\
                 DROP TABLE IF EXISTS {keyspace}.gone;",
            ),
        ];
        let error = expected(&files.map(migration)).unwrap_err();
        assert!(
            error.to_string().contains("does not have"),
            "dropping an unknown column: {error}"
        );

        let files = [
            files[0],
            (
                2,
                "ALTER TABLE {keyspace}.t ADD s Frozen<Set<text>> static;\n\
                 ALTER TABLE {keyspace}.t DROP m;\n\
                 ALTER TABLE {keyspace}.t WITH gc_grace_seconds = 3600;\n\
                 DROP TABLE IF EXISTS {keyspace}.gone;",
            ),
        ];
        let schema = expected(&files.map(migration)).unwrap();
        assert_eq!(schema.keys().collect::<Vec<_>>(), ["t"]);
        let t = &schema["t"];
        assert_eq!(t["a"].kind, ColumnKind::PartitionKey);
        assert_eq!(t["b"].kind, ColumnKind::PartitionKey);
        assert_eq!(t["c"].kind, ColumnKind::Clustering);
        assert_eq!(t["s"], column("frozen<set<text>>", ColumnKind::Static));
        assert!(!t.contains_key("m"));
    }

    #[test]
    fn an_added_column_is_named_for_the_rerun_check() {
        assert_eq!(
            added_column("alter table ks1.read_states add deleted boolean"),
            Some(("read_states".to_owned(), "deleted".to_owned()))
        );
        assert_eq!(
            added_column("ALTER TABLE ks1.t ADD s frozen<set<text>> static"),
            Some(("t".to_owned(), "s".to_owned()))
        );
        assert_eq!(added_column("ALTER TABLE ks1.t DROP s"), None);
        assert_eq!(
            added_column("ALTER TABLE ks1.t WITH gc_grace_seconds = 3600"),
            None
        );
        assert_eq!(
            added_column("CREATE TABLE IF NOT EXISTS ks1.t (a int PRIMARY KEY)"),
            None
        );
    }

    #[test]
    fn statements_the_check_cannot_follow_are_refused() {
        for text in [
            "CREATE INDEX ON {keyspace}.t (b);",
            "CREATE TYPE {keyspace}.address (street text);",
            "ALTER TABLE {keyspace}.t RENAME a TO b;",
            "CREATE TABLE {keyspace}.t (a int);",
            "CREATE TABLE other.t (a int PRIMARY KEY);",
        ] {
            let known = [test_migration(1, text)];
            let error = expected(&known).unwrap_err();
            assert!(
                matches!(error, MigrateError::BadFile { .. }),
                "{text}: {error:?}"
            );
        }
    }
}
