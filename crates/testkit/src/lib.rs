//! cloudsync-testkit
