//! Checks statements and Rust value types against the column types the
//! migrations create, without a cluster (tests only).

use std::collections::HashMap;

use ::scylla::frame::response::result::{
    CollectionType, ColumnSpec, ColumnType, NativeType, TableSpec,
};
use ::scylla::serialize::SerializationError;
use ::scylla::serialize::row::{RowSerializationContext, SerializeRow};
use ::scylla::serialize::writers::RowWriter;

/// The CQL type of every column, as `table.column`, from the schema the
/// migrations create (the one the start-up check holds the cluster to), so
/// these tests check the statements and the Rust value types against the
/// schema the cluster will really have.
pub fn schema_types() -> HashMap<String, ColumnType<'static>> {
    let schema = super::migrate::schema::expected(&super::migrate::migrations().unwrap()).unwrap();
    let mut types = HashMap::new();
    for (table, columns) in &schema {
        for (column, definition) in columns {
            let typ = match definition.cql_type.as_str() {
                "bigint" => ColumnType::Native(NativeType::BigInt),
                "int" => ColumnType::Native(NativeType::Int),
                "boolean" => ColumnType::Native(NativeType::Boolean),
                "text" => ColumnType::Native(NativeType::Text),
                "timestamp" => ColumnType::Native(NativeType::Timestamp),
                "frozen<list<bigint>>" => ColumnType::Collection {
                    frozen: true,
                    typ: CollectionType::List(Box::new(ColumnType::Native(NativeType::BigInt))),
                },
                other => panic!("add {other} to this test"),
            };
            types.insert(format!("{table}.{column}"), typ);
        }
    }
    // A USING TIMESTAMP marker is a bigint, a TTL marker an int.
    types.insert(
        "[timestamp]".to_owned(),
        ColumnType::Native(NativeType::BigInt),
    );
    types.insert("[ttl]".to_owned(), ColumnType::Native(NativeType::Int));
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
        } else if before.ends_with("TTL") {
            "[ttl]".to_owned()
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
