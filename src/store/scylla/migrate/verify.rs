//! The start-up check of the tables themselves: the keyspace's tables and
//! columns, as `system_schema.columns` lists them, must be exactly the ones
//! the migrations create, with the same CQL types and kinds. The history
//! alone cannot tell a table dropped or altered by hand, which would
//! otherwise show up only when a statement is prepared or run.
//!
//! The comparison ([`compare`]) is a pure function, unit-tested with rows
//! as the cluster returns them.

use std::fmt;

use ::scylla::client::session::Session;
use ::scylla::statement::Statement;

use super::MigrateError;
use super::schema::{Column, Schema, normalise_type};

/// One row of `system_schema.columns` for the keyspace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnRow {
    pub table: String,
    pub column: String,
    /// As the cluster writes it: `partition_key`, `clustering`, `regular`
    /// or `static`.
    pub kind: String,
    pub cql_type: String,
}

/// One way the keyspace differs from the migrations' schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Difference {
    MissingTable {
        table: String,
    },
    ExtraTable {
        table: String,
    },
    MissingColumn {
        table: String,
        column: String,
        expected: Column,
    },
    ExtraColumn {
        table: String,
        column: String,
        found: String,
    },
    AlteredColumn {
        table: String,
        column: String,
        expected: Column,
        found: String,
    },
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Difference::MissingTable { table } => write!(f, "table {table} is missing"),
            Difference::ExtraTable { table } => {
                write!(f, "table {table} is not created by the migrations")
            }
            Difference::MissingColumn {
                table,
                column,
                expected,
            } => write!(f, "column {table}.{column} ({expected}) is missing"),
            Difference::ExtraColumn {
                table,
                column,
                found,
            } => write!(
                f,
                "column {table}.{column} ({found}) is not created by the migrations"
            ),
            Difference::AlteredColumn {
                table,
                column,
                expected,
                found,
            } => write!(f, "column {table}.{column} is {found}, expected {expected}"),
        }
    }
}

/// Returns every difference between the `expected` schema and the
/// keyspace's columns, tables first, in name order.
pub fn compare(expected: &Schema, found: &[ColumnRow]) -> Vec<Difference> {
    let mut differences = Vec::new();
    let mut found_tables: Vec<&str> = found.iter().map(|row| row.table.as_str()).collect();
    found_tables.sort_unstable();
    found_tables.dedup();
    for table in expected.keys() {
        if found_tables.binary_search(&table.as_str()).is_err() {
            differences.push(Difference::MissingTable {
                table: table.clone(),
            });
        }
    }
    for table in &found_tables {
        if !expected.contains_key(*table) {
            differences.push(Difference::ExtraTable {
                table: (*table).to_owned(),
            });
        }
    }
    for (table, columns) in expected {
        if found_tables.binary_search(&table.as_str()).is_err() {
            continue;
        }
        for (column, definition) in columns {
            let row = found
                .iter()
                .find(|row| &row.table == table && &row.column == column);
            match row {
                None => differences.push(Difference::MissingColumn {
                    table: table.clone(),
                    column: column.clone(),
                    expected: definition.clone(),
                }),
                Some(row)
                    if normalise_type(&row.cql_type) != definition.cql_type
                        || row.kind != definition.kind.name() =>
                {
                    differences.push(Difference::AlteredColumn {
                        table: table.clone(),
                        column: column.clone(),
                        expected: definition.clone(),
                        found: describe(row),
                    });
                }
                Some(_) => {}
            }
        }
        let mut extra: Vec<&ColumnRow> = found
            .iter()
            .filter(|row| &row.table == table && !columns.contains_key(&row.column))
            .collect();
        extra.sort_by(|a, b| a.column.cmp(&b.column));
        for row in extra {
            differences.push(Difference::ExtraColumn {
                table: table.clone(),
                column: row.column.clone(),
                found: describe(row),
            });
        }
    }
    differences
}

/// Describes a column as [`Column`]'s `Display` does.
fn describe(row: &ColumnRow) -> String {
    let cql_type = normalise_type(&row.cql_type);
    if row.kind == "regular" {
        cql_type
    } else {
        format!("{cql_type} {}", row.kind)
    }
}

/// Succeeds when the keyspace's tables and columns are exactly `expected`.
pub async fn verify(
    session: &Session,
    keyspace: &str,
    expected: &Schema,
) -> Result<(), MigrateError> {
    let found = read_columns(session, keyspace).await?;
    let differences = compare(expected, &found);
    if differences.is_empty() {
        return Ok(());
    }
    Err(MigrateError::SchemaMismatch {
        keyspace: keyspace.to_owned(),
        differences: differences
            .iter()
            .map(Difference::to_string)
            .collect::<Vec<_>>()
            .join("; "),
    })
}

/// A `system_schema.columns` row as read: table, column, kind, type.
type ColumnsRow = (String, String, String, String);

/// Reads every column of the keyspace's tables (views and index tables
/// included: they are not ours either).
pub(super) async fn read_columns(
    session: &Session,
    keyspace: &str,
) -> Result<Vec<ColumnRow>, MigrateError> {
    let mut query = Statement::new(
        "SELECT table_name, column_name, kind, type FROM system_schema.columns \
         WHERE keyspace_name = ?",
    );
    query.set_consistency(::scylla::statement::Consistency::One);
    let rows: Vec<ColumnsRow> = super::select(
        session,
        query,
        (keyspace,),
        "reading the keyspace's columns",
    )
    .await?;
    Ok(rows
        .into_iter()
        .map(|(table, column, kind, cql_type)| ColumnRow {
            table,
            column,
            kind,
            cql_type,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::scylla::migrate::{migrations, schema};

    fn expected() -> Schema {
        schema::expected(&migrations().unwrap()).unwrap()
    }

    /// The rows `system_schema.columns` holds for a freshly migrated
    /// keyspace, as ScyllaDB and Cassandra write them.
    fn migrated() -> Vec<ColumnRow> {
        let rows = [
            ("meta", "name", "partition_key", "text"),
            ("meta", "value", "regular", "bigint"),
            ("read_states", "channel_id", "clustering", "bigint"),
            ("read_states", "last_message_id", "regular", "bigint"),
            ("read_states", "last_pin_timestamp_ms", "regular", "bigint"),
            (
                "read_states",
                "pending_mentions",
                "regular",
                "frozen<list<bigint>>",
            ),
            ("read_states", "untracked_mentions", "regular", "int"),
            ("read_states", "untracked_until", "regular", "bigint"),
            ("read_states", "updated_at_ms", "regular", "bigint"),
            ("read_states", "user_id", "partition_key", "bigint"),
            ("read_states", "user_version", "static", "bigint"),
            ("read_states", "version", "regular", "bigint"),
            ("read_states", "deleted", "regular", "boolean"),
            ("schema_migrations", "applied_at", "regular", "timestamp"),
            ("schema_migrations", "checksum", "regular", "text"),
            ("schema_migrations", "name", "regular", "text"),
            ("schema_migrations", "version", "partition_key", "int"),
            ("slot_leases", "slot", "partition_key", "int"),
            ("slot_leases", "owner", "regular", "text"),
            ("slot_leases", "incarnation", "regular", "bigint"),
            ("slot_leases", "address", "regular", "text"),
            ("cluster_members", "member", "partition_key", "text"),
            ("cluster_members", "incarnation", "regular", "bigint"),
            ("cluster_members", "address", "regular", "text"),
        ];
        rows.iter()
            .map(|(table, column, kind, cql_type)| ColumnRow {
                table: (*table).to_owned(),
                column: (*column).to_owned(),
                kind: (*kind).to_owned(),
                cql_type: (*cql_type).to_owned(),
            })
            .collect()
    }

    fn messages(found: &[ColumnRow]) -> Vec<String> {
        compare(&expected(), found)
            .iter()
            .map(Difference::to_string)
            .collect()
    }

    #[test]
    fn a_freshly_migrated_keyspace_matches() {
        assert_eq!(messages(&migrated()), Vec::<String>::new());
        let mut spaced = migrated();
        spaced[5].cql_type = "frozen<list<BIGINT>>".to_owned();
        assert_eq!(messages(&spaced), Vec::<String>::new());
    }

    #[test]
    fn a_missing_or_extra_table_is_named() {
        let without_meta: Vec<ColumnRow> = migrated()
            .into_iter()
            .filter(|row| row.table != "meta")
            .collect();
        assert_eq!(messages(&without_meta), ["table meta is missing"]);

        let mut with_index = migrated();
        with_index.push(ColumnRow {
            table: "read_states_by_channel_index".to_owned(),
            column: "channel_id".to_owned(),
            kind: "partition_key".to_owned(),
            cql_type: "bigint".to_owned(),
        });
        assert_eq!(
            messages(&with_index),
            ["table read_states_by_channel_index is not created by the migrations"]
        );
        assert_eq!(
            messages(&[]).len(),
            5,
            "an empty keyspace lacks every table"
        );
    }

    #[test]
    fn a_missing_extra_or_altered_column_is_named() {
        let mut found: Vec<ColumnRow> = migrated()
            .into_iter()
            .filter(|row| row.column != "untracked_until")
            .collect();
        for row in &mut found {
            match (row.table.as_str(), row.column.as_str()) {
                ("read_states", "version") => row.cql_type = "int".to_owned(),
                ("read_states", "user_version") => row.kind = "regular".to_owned(),
                _ => {}
            }
        }
        found.push(ColumnRow {
            table: "read_states".to_owned(),
            column: "note".to_owned(),
            kind: "regular".to_owned(),
            cql_type: "text".to_owned(),
        });
        assert_eq!(
            messages(&found),
            [
                "column read_states.untracked_until (bigint) is missing",
                "column read_states.user_version is bigint, expected bigint static",
                "column read_states.version is int, expected bigint",
                "column read_states.note (text) is not created by the migrations",
            ]
        );
    }

    #[test]
    fn the_refusal_names_the_keyspace_and_every_difference() {
        let error = MigrateError::SchemaMismatch {
            keyspace: "readstates".to_owned(),
            differences: compare(&expected(), &[])
                .iter()
                .map(Difference::to_string)
                .collect::<Vec<_>>()
                .join("; "),
        };
        let message = error.to_string();
        for part in [
            "readstates",
            "table meta is missing",
            "table read_states is missing",
        ] {
            assert!(message.contains(part), "{message}");
        }
    }
}
