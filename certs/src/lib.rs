//! TLS certificates for switchback: filled in by the TLS work (ACME orders and renewal, the
//! on-disk store, the SNI resolver). Empty for now so the workspace has its final shape.
