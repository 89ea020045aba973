//! A missing or bad file named by `[tls]` or `[auth]` stops the start,
//! and the error names the setting and the path.

use std::path::Path;
use std::sync::Arc;

use readstates::config::Config;
use readstates::server;

use crate::common::{InstrumentedStore, test_config};
use crate::pki::Pki;

#[tokio::test]
async fn a_missing_or_bad_file_stops_the_start_and_names_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let missing = dir.path().join("no-such.pem");
    let not_a_key = dir.path().join("not-a-key.pem");
    std::fs::write(&not_a_key, "hello\n").unwrap();
    let short_tokens = dir.path().join("short-tokens");
    std::fs::write(&short_tokens, "orders short\n").unwrap();

    type Change<'a> = Box<dyn Fn(&mut Config) + 'a>;
    let cases: [(&str, Change, &Path); 4] = [
        (
            "tls.cert_file",
            Box::new(|config: &mut Config| config.tls.cert_file = Some(missing.clone())),
            &missing,
        ),
        (
            "tls.key_file",
            Box::new(|config: &mut Config| config.tls.key_file = Some(not_a_key.clone())),
            &not_a_key,
        ),
        (
            "tls.client_ca_file",
            Box::new(|config: &mut Config| {
                config.tls.client_ca_file = Some(missing.clone());
                config.auth.allowed_callers = vec!["orders".to_owned()];
            }),
            &missing,
        ),
        (
            "auth.tokens_file",
            Box::new(|config: &mut Config| config.auth.tokens_file = Some(short_tokens.clone())),
            &short_tokens,
        ),
    ];
    for (index, (setting, change, path)) in cases.into_iter().enumerate() {
        let mut config = test_config(&dir.path().join("data"));
        pki.serve_tls(&mut config);
        change(&mut config);
        config.validate().unwrap();
        let store: Arc<dyn readstates::store::Store> =
            InstrumentedStore::open(&dir.path().join(format!("data-{index}")));
        let error = match server::start(&config, store).await {
            Ok(_) => panic!("{setting}: the server started"),
            Err(error) => format!("{error:#}"),
        };
        assert!(error.contains(setting), "{setting}: {error}");
        assert!(
            error.contains(&path.display().to_string()),
            "{setting}: {error}"
        );
    }
}
