use std::time::Duration;

use super::*;

/// Checks that each config text is refused with an error naming its field.
fn assert_refused(cases: &[(&str, &str)]) {
    for (text, field) in cases {
        let error = Config::from_toml_and_env(text, env(&[])).unwrap_err();
        assert!(error.to_string().contains(field), "{text}: {error}");
    }
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[test]
fn empty_file_gives_laptop_defaults() {
    let config = Config::from_toml_and_env("", env(&[])).unwrap();
    assert_eq!(config, Config::default());
    assert_eq!(config.flush.delay(), Duration::from_secs(30));
}

#[test]
fn the_example_file_documents_the_defaults() {
    let text = include_str!("../../readstates.example.toml");
    let config = Config::from_toml_and_env(text, env(&[])).unwrap();
    assert_eq!(config, Config::default());
}

#[test]
fn file_values_and_env_overrides_apply() {
    let text = "[cache]\ncapacity = 500\n[flush]\ndelay_ms = 2000\n";
    let overrides = env(&[
        ("READSTATES_FLUSH_DELAY_MS", "5000"),
        ("READSTATES_STORE_DATA_DIR", "/tmp/rs"),
        ("READSTATES_TEST_SCYLLA", "127.0.0.1:9042"),
        ("PATH", "/bin"),
    ]);
    let config = Config::from_toml_and_env(text, overrides).unwrap();
    assert_eq!(config.cache.capacity, 500);
    assert_eq!(config.flush.delay_ms, 5000);
    assert_eq!(config.store.data_dir, PathBuf::from("/tmp/rs"));
}

#[test]
fn unknown_keys_and_bad_ranges_are_refused_by_name() {
    let error = Config::from_toml_and_env("[cache]\ncapacty = 5\n", env(&[])).unwrap_err();
    assert!(error.to_string().contains("capacty"), "{error}");

    let error =
        Config::from_toml_and_env("", env(&[("READSTATES_CACHE_CAPACITY", "0")])).unwrap_err();
    assert!(error.to_string().contains("cache.capacity"), "{error}");

    let error = Config::from_toml_and_env("[flush]\ndelay_ms = 100\ntick_ms = 500\n", env(&[]))
        .unwrap_err();
    assert!(error.to_string().contains("flush.tick_ms"), "{error}");

    let error = Config::from_toml_and_env("[store]\nbackend = \"mysql\"\n", env(&[])).unwrap_err();
    assert!(error.to_string().contains("mysql"), "{error}");
    assert_refused(&[
        ("[store]\nreader_threads = 0\n", "store.reader_threads"),
        ("[store]\ncache_mib = 0\n", "store.cache_mib"),
        (
            "[store]\nrepack_per_change = 65\n",
            "store.repack_per_change",
        ),
        (
            "[server]\nmax_concurrent_requests_per_connection = 4096\n",
            "server.max_concurrent_requests_per_connection",
        ),
        (
            "[store]\ninjected_latency_median_ms = 5\ninjected_latency_p99_ms = 1\n",
            "store.injected_latency_p99_ms",
        ),
        (
            "[flush]\nversion_lease_ms = 999\n",
            "flush.version_lease_ms",
        ),
        (
            "[flush]\npurge_interval_ms = 0\n",
            "flush.purge_interval_ms",
        ),
        (
            "[flush]\ndelay_ms = 60000\ntombstone_grace_ms = 59999\n",
            "flush.tombstone_grace_ms",
        ),
        ("[watch]\ncoalesce_ms = 1001\n", "watch.coalesce_ms"),
    ]);
}

#[test]
fn the_scylla_section_parses_and_takes_env_overrides() {
    let text = "[store]\nbackend = \"scylla\"\n[scylla]\nread_consistency = \"one\"\n\
                write_consistency = \"LOCAL_ONE\"\nretry_policy = \"fallthrough\"\n";
    let overrides = env(&[
        (
            "READSTATES_SCYLLA_CONTACT_POINTS",
            "scylla-1:9042, scylla-2:9042",
        ),
        ("READSTATES_SCYLLA_USERNAME", "readstates"),
        ("READSTATES_SCYLLA_PASSWORD", "007"),
        ("READSTATES_SCYLLA_SPECULATIVE_EXECUTION", "constant"),
    ]);
    let config = Config::from_toml_and_env(text, overrides).unwrap();
    assert_eq!(config.store.backend, StoreBackend::Scylla);
    let scylla = &config.scylla;
    assert_eq!(scylla.contact_points, ["scylla-1:9042", "scylla-2:9042"]);
    assert_eq!(scylla.read_consistency, Consistency::One);
    assert_eq!(scylla.write_consistency, Consistency::LocalOne);
    assert_eq!(scylla.retry_policy, RetryPolicyKind::Fallthrough);
    assert_eq!(scylla.speculative_execution, SpeculativeExecution::Constant);
    assert_eq!(scylla.username.as_deref(), Some("readstates"));
    assert_eq!(scylla.password.as_ref().map(Secret::expose), Some("007"));
    assert!(!format!("{config:?}").contains("007"), "the password leaks");

    let cassandra = Config::from_toml_and_env("[store]\nbackend = \"cassandra\"\n", env(&[]));
    assert_eq!(cassandra.unwrap().store.backend, StoreBackend::Scylla);
}

#[test]
fn bad_scylla_settings_are_refused_by_name() {
    let refused = |text: &str| {
        Config::from_toml_and_env(text, env(&[]))
            .unwrap_err()
            .to_string()
    };
    let cases = [
        ("[scylla]\ncontact_points = []\n", "scylla.contact_points"),
        ("[scylla]\nkeyspace = \"Read-States\"\n", "scylla.keyspace"),
        (
            "[scylla]\nkeyspace = \"ks; DROP KEYSPACE x\"\n",
            "scylla.keyspace",
        ),
        ("[scylla]\nreplication = \"3\"\n", "scylla.replication"),
        ("[scylla]\npage_size = 0\n", "scylla.page_size"),
        ("[scylla]\nmax_in_flight = 0\n", "scylla.max_in_flight"),
        ("[scylla]\nread_consistency = \"most\"\n", "LOCAL_QUORUM"),
        (
            "[scylla]\nread_consistency = \"any\"\n",
            "scylla.read_consistency",
        ),
        ("[scylla]\nretry_policy = \"always\"\n", "always"),
        ("[scylla]\nusername = \"u\"\n", "scylla.password"),
        ("[scylla]\ntls_ca_file = \"/ca.pem\"\n", "scylla.tls"),
        ("[scylla]\ntls = true\n", "scylla.tls_ca_file"),
        (
            "[scylla]\ntls = true\ntls_ca_file = \"/ca.pem\"\ntls_cert_file = \"/c.pem\"\n",
            "scylla.tls_cert_file",
        ),
        (
            "[scylla]\nspeculative_execution = \"constant\"\nspeculative_max_attempts = 0\n",
            "scylla.speculative",
        ),
        ("[scylla]\nkeyspaces = \"x\"\n", "keyspaces"),
    ];
    for (text, expected) in cases {
        let error = refused(text);
        assert!(error.contains(expected), "{text}: {error}");
    }
    assert!(is_cql_identifier("readstates_test_0a9"));
    assert!(!is_cql_identifier("_x"));
    assert!(!is_cql_identifier(&"a".repeat(49)));
}

#[test]
fn connection_settings_out_of_range_are_refused_by_name() {
    assert_refused(&[
        ("[server]\nmax_connections = 0\n", "server.max_connections"),
        (
            "[server]\nfirst_request_timeout_ms = 0\n",
            "server.first_request_timeout_ms",
        ),
        ("[server]\nidle_timeout_ms = 10\n", "server.idle_timeout_ms"),
        (
            "[server]\nkeepalive_interval_ms = 10\n",
            "server.keepalive_interval_ms",
        ),
        (
            "[server]\nkeepalive_timeout_ms = 0\n",
            "server.keepalive_timeout_ms",
        ),
        (
            "[metrics]\nmax_connections = 0\n",
            "metrics.max_connections",
        ),
        (
            "[metrics]\nheader_read_timeout_ms = 0\n",
            "metrics.header_read_timeout_ms",
        ),
    ]);
    // Keepalive pings can be turned off.
    let config =
        Config::from_toml_and_env("[server]\nkeepalive_interval_ms = 0\n", env(&[])).unwrap();
    assert_eq!(config.server.keepalive_interval(), None);
}

#[test]
fn the_sweep_follows_the_backend_unless_set() {
    let config = Config::from_toml_and_env("", env(&[])).unwrap();
    assert!(config.flush.sweeps(StoreBackend::Embedded));
    assert!(!config.flush.sweeps(StoreBackend::Scylla));
    let off = Config::from_toml_and_env("[flush]\nsweep = false\n", env(&[])).unwrap();
    assert!(!off.flush.sweeps(StoreBackend::Embedded));
    let on = Config::from_toml_and_env("", env(&[("READSTATES_FLUSH_SWEEP", "true")])).unwrap();
    assert!(on.flush.sweeps(StoreBackend::Scylla));
}
