//! The OS credential store, for real: a Secret Service (gnome-keyring) on a private D-Bus session, as
//! `scripts/test` provides. This test fails, not skips, when no Secret Service is reachable.

use cloudsync_cli::client::credentials::CredentialStore;

#[test]
fn tokens_round_trip_through_the_secret_service() {
    assert!(
        std::env::var_os("DBUS_SESSION_BUS_ADDRESS").is_some(),
        "no D-Bus session: run the suite with scripts/test, which starts gnome-keyring on a private bus"
    );
    let store = CredentialStore::Keyring;
    let account = format!("https://test-{}.invalid:8443", std::process::id());
    let secret = "s3cr3t-token-value-for-the-keyring-test";
    store.set(&account, secret).expect("store in the Secret Service");
    assert_eq!(store.get(&account).expect("read").as_deref().map(String::as_str), Some(secret));
    store.delete(&account).expect("delete");
    assert!(store.get(&account).expect("read after delete").is_none());
    store.delete(&account).expect("deleting twice is fine");
}
