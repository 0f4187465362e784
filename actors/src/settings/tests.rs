use super::*;

fn imap_source() -> ImapSource {
    ImapSource {
        name: "invoices".into(),
        host: "imap.example.com".into(),
        username: "u@example.com".into(),
        password: "pw".into(),
        ..Default::default()
    }
}

#[test]
fn imap_sources_are_checked_and_named_by_index() {
    let mut s = Settings::default();
    s.imap.sources = vec![imap_source()];
    s.validate().unwrap();
    s.imap.sources[0].tls = ImapTls::None;
    assert_eq!(s.validate().unwrap_err().key, "imap.sources[0].tls");
    s.imap.sources[0].host = "127.0.0.1".into();
    s.validate().unwrap();
    s.imap.sources.push(imap_source());
    assert_eq!(s.validate().unwrap_err().key, "imap.sources[1].name");
    s.imap.sources[1].name = "other".into();
    s.imap.sources[1].auth = ImapAuth::Xoauth2;
    assert_eq!(
        s.validate().unwrap_err().key,
        "imap.sources[1].refresh_token"
    );
    // A reference that does not resolve is refused when the settings are read.
    let e = serde_json::from_value::<ImapSource>(serde_json::json!({
        "refresh_token": "env:MS1_TEST_SURELY_UNSET_VAR"
    }))
    .unwrap_err();
    assert!(e.to_string().contains("MS1_TEST_SURELY_UNSET_VAR"), "{e}");
    s.imap.sources[1].refresh_token = "rt".into();
    assert_eq!(s.validate().unwrap_err().key, "imap.sources[1].token_url");
    s.imap.sources[1].token_url = "https://oauth2.googleapis.com/token".into();
    s.imap.sources[1].client_id = "cid".into();
    s.validate().unwrap();
    s.imap.sources[1].after_delivery = AfterDelivery::Move;
    assert_eq!(s.validate().unwrap_err().key, "imap.sources[1].move_to");
}

#[test]
fn dead_letters_end_as_chosen_in_a_folder_of_their_own_and_graph_marks_them_read_only_in_unread_mode(
) {
    let mut s = Settings::default();
    s.imap.sources = vec![imap_source()];
    assert_eq!(
        s.imap.sources[0].after_dead_letter,
        AfterDeadLetter::Leave,
        "leave is the default"
    );
    assert!(!s.imap.sources[0].has_follow_ups());
    s.imap.sources[0].after_dead_letter = AfterDeadLetter::Seen;
    s.validate().unwrap();
    assert!(s.imap.sources[0].has_follow_ups());
    assert!(s.ends_dead_letters("imap", "invoices"));
    assert!(!s.ends_dead_letters("imap", "another"));
    assert!(
        !s.acts_after_delivery("imap", "invoices"),
        "a target for its dead letters only"
    );
    s.imap.sources[0].after_dead_letter = AfterDeadLetter::Move;
    let key = "imap.sources[0].dead_letter_move_to";
    assert_eq!(s.validate().unwrap_err().key, key, "a folder is needed");
    s.imap.sources[0].dead_letter_move_to = "INBOX".into();
    assert_eq!(s.validate().unwrap_err().key, key, "not the source folder");
    s.imap.sources[0].dead_letter_move_to = "Ingestion failed".into();
    s.validate().unwrap();
    s.imap.sources[0].after_delivery = AfterDelivery::Move;
    s.imap.sources[0].move_to = "Ingestion failed".into();
    assert_eq!(
        s.validate().unwrap_err().key,
        key,
        "not the delivered folder"
    );
    s.imap.sources[0].move_to = "Processed".into();
    s.validate().unwrap();
    // Read by name; an unknown end is refused naming the values there are.
    let src: ImapSource = serde_json::from_value(serde_json::json!({
        "after_dead_letter": "move", "dead_letter_move_to": "Ingestion failed"
    }))
    .unwrap();
    assert_eq!(src.after_dead_letter, AfterDeadLetter::Move);
    let e = serde_json::from_value::<ImapSource>(serde_json::json!({
        "after_dead_letter": "delete"
    }))
    .unwrap_err();
    assert!(e.to_string().contains("leave"), "{e}");

    assert_eq!(s.graph.after_dead_letter, GraphAfterDeadLetter::Leave);
    s.graph.after_dead_letter = GraphAfterDeadLetter::MarkRead;
    assert_eq!(
        s.validate().unwrap_err().key,
        "graph.after_dead_letter",
        "delta mode leaves messages as they are"
    );
    s.graph.mode = GraphMode::Unread;
    s.validate().unwrap();
    let g = |end: &str| {
        serde_json::from_value::<GraphSettings>(serde_json::json!({ "after_dead_letter": end }))
    };
    assert_eq!(
        g("mark_read").unwrap().after_dead_letter,
        GraphAfterDeadLetter::MarkRead
    );
    assert_eq!(
        g("move").unwrap().after_dead_letter,
        GraphAfterDeadLetter::Move
    );
    assert!(g("delete").is_err());
    s.graph.after_dead_letter = GraphAfterDeadLetter::Move;
    assert_eq!(s.validate().unwrap_err().key, "graph.dead_letter_move_to");
    s.graph.dead_letter_move_to = "Inbox".into();
    assert_eq!(
        s.validate().unwrap_err().key,
        "graph.dead_letter_move_to",
        "not the folder read"
    );
    s.graph.dead_letter_move_to = "junkemail".into();
    s.validate().unwrap();
}

#[test]
fn debug_output_of_the_settings_shows_no_secret() {
    let mut s = Settings::default();
    s.redis.url = "redis://:redis-pw-1@10.0.0.1:6379".into();
    s.ms4.api_key = "ms4-key-2".into();
    s.control.token = "control-token-3".into();
    s.graph.client_secret = "graph-secret-4".into();
    s.webhook.client_state = "client-state-5".into();
    s.imap.sources = vec![ImapSource {
        password: "imap-pw-6".into(),
        client_secret: "imap-cs-7".into(),
        refresh_token: "imap-rt-8".into(),
        ..imap_source()
    }];
    let shown = format!("{s:?} {s:#?}");
    for secret in [
        "redis-pw-1",
        "ms4-key-2",
        "control-token-3",
        "graph-secret-4",
        "client-state-5",
        "imap-pw-6",
        "imap-cs-7",
        "imap-rt-8",
    ] {
        assert!(!shown.contains(secret), "{secret} in {shown}");
    }
    assert!(shown.contains("redis://:****@10.0.0.1:6379"), "{shown}");
    assert!(shown.contains("<redacted>"), "{shown}");
}

#[test]
fn secrets_come_from_files_and_the_environment() {
    assert_eq!(resolve_secret("plain").unwrap(), "plain");
    let dir = std::env::temp_dir().join(format!("ms1-secret-{}", std::process::id()));
    std::fs::write(&dir, "s3cret\n").unwrap();
    assert_eq!(
        resolve_secret(&format!("file:{}", dir.display())).unwrap(),
        "s3cret"
    );
    std::fs::remove_file(&dir).unwrap();
    assert!(resolve_secret("file:/nonexistent/x").is_err());
    assert_eq!(ImapSource::default().port(), 993);
    let s = ImapSource {
        tls: ImapTls::Starttls,
        ..Default::default()
    };
    assert_eq!(s.port(), 143);
}

#[test]
fn each_graph_credential_needs_its_own_settings_and_no_other() {
    let with = |credential, change: &dyn Fn(&mut GraphSettings)| {
        let mut s = Settings::default();
        s.graph.mailboxes = vec!["a@contoso.example".into()];
        s.graph.credential = credential;
        change(&mut s.graph);
        s.validate().err().map(|e| e.key)
    };
    let app = |g: &mut GraphSettings| {
        g.tenant_id = "contoso".into();
        g.client_id = "app".into();
    };
    assert_eq!(
        with(GraphCredential::Secret, &app).as_deref(),
        Some("graph.client_secret")
    );
    assert_eq!(
        with(GraphCredential::Certificate, &app).as_deref(),
        Some("graph.client_certificate")
    );
    assert_eq!(
        with(GraphCredential::Certificate, &|g| {
            app(g);
            g.client_certificate = "/etc/ms1/graph.pem".into();
        })
        .as_deref(),
        Some("graph.client_certificate_key")
    );
    // A managed identity needs neither tenant, nor client id, nor secret.
    assert_eq!(with(GraphCredential::ManagedIdentity, &|_| {}), None);
    assert_eq!(
        with(GraphCredential::ManagedIdentity, &|g| {
            g.managed_identity_endpoint = "http://imds.example.com/token".into()
        })
        .as_deref(),
        Some("graph.managed_identity_endpoint")
    );
    assert_eq!(
        with(GraphCredential::ManagedIdentity, &|g| {
            g.managed_identity_endpoint = "http://127.0.0.1:8500/metadata".into()
        }),
        None
    );
    assert_eq!(
        with(GraphCredential::WorkloadIdentity, &app).as_deref(),
        Some("graph.federated_token_file")
    );
    let parsed: GraphCredential = serde_json::from_str("\"managed_identity\"").unwrap();
    assert_eq!(parsed, GraphCredential::ManagedIdentity);
}

#[test]
fn workload_identity_takes_what_the_settings_leave_empty_from_the_azure_variables() {
    let env = |name: &str| {
        Some(
            match name {
                "AZURE_TENANT_ID" => "tenant-from-env",
                "AZURE_CLIENT_ID" => "client-from-env",
                "AZURE_FEDERATED_TOKEN_FILE" => {
                    "/var/run/secrets/azure/tokens/azure-identity-token"
                }
                "AZURE_AUTHORITY_HOST" => "https://login.microsoftonline.us/",
                _ => return None,
            }
            .to_string(),
        )
    };
    let mut g = GraphSettings {
        credential: GraphCredential::WorkloadIdentity,
        client_id: "client-from-settings".into(),
        ..Default::default()
    };
    g.apply_workload_identity_environment(env);
    assert_eq!(
        (g.tenant_id.as_str(), g.client_id.as_str()),
        ("tenant-from-env", "client-from-settings")
    );
    assert_eq!(
        g.federated_token_file,
        "/var/run/secrets/azure/tokens/azure-identity-token"
    );
    assert_eq!(
        g.single_tenant().token_url(),
        "https://login.microsoftonline.us/tenant-from-env/oauth2/v2.0/token"
    );
    // A configured authority wins; another credential takes nothing from the environment.
    let mut g = GraphSettings {
        credential: GraphCredential::WorkloadIdentity,
        authority: "http://127.0.0.1:9000/{tenant}".into(),
        ..Default::default()
    };
    g.apply_workload_identity_environment(env);
    assert_eq!(g.authority, "http://127.0.0.1:9000/{tenant}");
    let mut g = GraphSettings::default();
    g.apply_workload_identity_environment(env);
    assert_eq!(g, GraphSettings::default());
}

#[test]
fn settings_that_cannot_work_are_refused_naming_their_key() {
    let refused = |change: &dyn Fn(&mut Settings)| {
        let mut s = Settings::default();
        change(&mut s);
        s.validate().unwrap_err()
    };
    let e = refused(&|s| s.ms4.batch_size = 500);
    assert_eq!(e.key, "ms4.batch_size");
    assert!(e.problem.contains("100"), "{e}");
    let mut s = Settings::default();
    s.ms4.max_batch = 500;
    s.ms4.batch_size = 500;
    s.validate().unwrap();
    for (key, url) in [
        ("ms4.base_url", "http://ms4.example.com"),
        ("graph.base_url", "http://graph.example.com/v1.0"),
        ("graph.authority", "http://login.example.com/{tenant}"),
    ] {
        let e = refused(&|s| match key {
            "ms4.base_url" => s.ms4.base_url = url.into(),
            "graph.base_url" => s.graph.base_url = url.into(),
            _ => s.graph.authority = url.into(),
        });
        assert_eq!(e.key, key);
        assert!(e.problem.contains("clear text"), "{e}");
    }
    let mut s = Settings::default();
    s.ms4.base_url = "http://127.0.0.1:8400".into();
    s.graph.base_url = "http://[::1]:9000/v1.0".into();
    s.graph.authority = "http://localhost:9000/{tenant}".into();
    s.validate().unwrap();
    let e = refused(&|s| s.graph.poll_interval_s = u64::MAX / 10);
    assert_eq!(e.key, "graph.poll_interval_s");
    let e = refused(&|s| s.breaker.open_ms = u64::MAX);
    assert_eq!(e.key, "breaker.open_ms");
    let e = refused(&|s| s.redis.idempotency_ttl_s = 10 * 366 * 24 * 3_600);
    assert_eq!(e.key, "redis.idempotency_ttl_s");
    let e = refused(&|s| {
        s.imap.sources = vec![imap_source()];
        s.imap.sources[0].poll_interval_s = 40 * 24 * 3_600;
    });
    assert_eq!(e.key, "imap.sources[0].poll_interval_s");
}

#[test]
fn the_unread_listing_window_is_bounded_and_zero_means_a_sweep_every_poll() {
    let d = Settings::default();
    assert_eq!(
        (d.graph.unread_overlap_s, d.graph.unread_sweep_s),
        (300, 3_600)
    );
    let with = |overlap: u64, sweep: u64| {
        let mut s = Settings::default();
        s.graph.unread_overlap_s = overlap;
        s.graph.unread_sweep_s = sweep;
        s.validate()
    };
    for (overlap, sweep) in [(0, 0), (86_400, 604_800), (2, 8)] {
        with(overlap, sweep).unwrap();
    }
    assert_eq!(
        with(86_401, 3_600).unwrap_err().key,
        "graph.unread_overlap_s"
    );
    let e = with(300, 604_801).unwrap_err();
    assert_eq!(e.key, "graph.unread_sweep_s");
    assert!(e.problem.contains("every poll"), "{e}");
}

#[test]
fn defaults_are_valid() {
    Settings::default().validate().unwrap();
}

#[test]
fn a_public_bind_without_token_is_refused() {
    let mut s = Settings::default();
    s.control.bind = "0.0.0.0:8000".into();
    assert_eq!(s.validate().unwrap_err().key, "control.token");
    s.control.token = "secret".into();
    let e = s.validate().unwrap_err();
    assert_eq!(e.key, "control.token", "a short token beyond loopback");
    assert!(e.problem.contains("32"), "{e}");
    s.control.token = "x".repeat(32).as_str().into();
    s.validate().unwrap();
    s.control.bind = "127.0.0.1:8000".into();
    s.control.token = "short".into();
    s.validate().unwrap();
}

#[test]
fn the_webhook_listener_is_checked() {
    let mut s = Settings::default();
    s.webhook.bind = "0.0.0.0:8443".into();
    s.validate().unwrap();
    s.webhook.bind = "127.0.0.1:8000".into();
    assert_eq!(s.validate().unwrap_err().key, "webhook.bind");
    s.webhook.bind = "somewhere".into();
    assert_eq!(s.validate().unwrap_err().key, "webhook.bind");
    let mut s = Settings::default();
    s.webhook.max_notifications_per_post = 0;
    assert_eq!(
        s.validate().unwrap_err().key,
        "webhook.max_notifications_per_post"
    );
}

#[test]
fn bad_values_name_their_key() {
    let mut s = Settings::default();
    s.ms4.batch_size = 0;
    assert_eq!(s.validate().unwrap_err().key, "ms4.batch_size");
    let mut s = Settings::default();
    s.redis.url = "http://x".into();
    assert_eq!(s.validate().unwrap_err().key, "redis.url");
    let mut s = Settings::default();
    s.graph.retry_max_ms = s.graph.retry_min_ms - 1;
    assert_eq!(s.validate().unwrap_err().key, "graph.retry_max_ms");
    let mut s = Settings::default();
    s.imap.retry_min_ms = 0;
    assert_eq!(s.validate().unwrap_err().key, "imap.retry_max_ms");
}

#[test]
fn a_national_cloud_sets_the_hosts_and_the_token_scope() {
    let mut g = GraphTenant {
        tenant_id: "t1".into(),
        ..Default::default()
    };
    assert_eq!(g.base_url(), "https://graph.microsoft.com/v1.0");
    assert_eq!(
        g.token_url(),
        "https://login.microsoftonline.com/t1/oauth2/v2.0/token"
    );
    assert_eq!(g.token_scope(), "https://graph.microsoft.com/.default");
    g.cloud = GraphCloud::Usgov;
    assert_eq!(g.base_url(), "https://graph.microsoft.us/v1.0");
    assert_eq!(
        g.token_url(),
        "https://login.microsoftonline.us/t1/oauth2/v2.0/token"
    );
    assert_eq!(g.token_scope(), "https://graph.microsoft.us/.default");
    g.cloud = GraphCloud::UsgovDod;
    assert_eq!(g.base_url(), "https://dod-graph.microsoft.us/v1.0");
    assert_eq!(g.token_scope(), "https://dod-graph.microsoft.us/.default");
    g.cloud = GraphCloud::China;
    assert_eq!(g.base_url(), "https://microsoftgraph.chinacloudapi.cn/v1.0");
    assert_eq!(
        g.token_url(),
        "https://login.chinacloudapi.cn/t1/oauth2/v2.0/token"
    );
    // Explicit hosts win (a proxy), the scope stays the cloud's.
    g.base_url = "https://graph-proxy.example/v1.0".into();
    g.authority = "https://login-proxy.example/{tenant}".into();
    assert_eq!(g.base_url(), "https://graph-proxy.example/v1.0");
    assert_eq!(
        g.token_url(),
        "https://login-proxy.example/t1/oauth2/v2.0/token"
    );
    assert_eq!(
        g.token_scope(),
        "https://microsoftgraph.chinacloudapi.cn/.default"
    );
}

#[test]
fn a_host_of_another_cloud_is_refused_by_name() {
    let mut s = Settings::default();
    s.graph.cloud = GraphCloud::Usgov;
    s.graph.base_url = "https://graph.microsoft.com/v1.0".into();
    let e = s.validate().unwrap_err();
    assert_eq!(e.key, "graph.base_url");
    assert!(e.problem.contains("global cloud"), "{}", e.problem);
    // GCC High and DoD share the sign-in host, not the Graph host.
    s.graph.base_url = "https://dod-graph.microsoft.us/v1.0".into();
    assert_eq!(s.validate().unwrap_err().key, "graph.base_url");
    s.graph.cloud = GraphCloud::UsgovDod;
    s.graph.authority = "https://login.microsoftonline.us/{tenant}".into();
    assert!(s.validate().is_ok(), "{:?}", s.validate());
    s.graph.authority = "https://login.chinacloudapi.cn/{tenant}".into();
    assert_eq!(s.validate().unwrap_err().key, "graph.authority");
    // A host no cloud owns (a proxy) is the operator's choice.
    s.graph.authority = "https://login-proxy.example/{tenant}".into();
    assert!(s.validate().is_ok());
    let parsed: GraphSettings = serde_json::from_str(r#"{"cloud": "usgov_dod"}"#).unwrap();
    assert_eq!(parsed.cloud, GraphCloud::UsgovDod);
}

#[test]
fn each_stage_retries_on_its_own_sections_bounds() {
    let mut s = Settings::default();
    s.graph.retry_min_ms = 1_000;
    s.imap.retry_max_ms = 5_000;
    assert_eq!(s.graph.retry().min, Duration::from_millis(1_000));
    assert_eq!(s.imap.retry().max, Duration::from_millis(5_000));
    assert_eq!(s.ms4.retry(), RetryBounds::from_ms(200, 30_000));
}

#[test]
fn a_hash_tag_is_the_first_braced_text_of_the_prefix() {
    assert_eq!(hash_tag("{ms1}:"), Some("ms1"));
    assert_eq!(hash_tag("app:{ms1}:"), Some("ms1"));
    assert_eq!(hash_tag("{a}{b}:"), Some("a"));
    assert_eq!(hash_tag("ms1:"), None);
    assert_eq!(
        hash_tag("{}:{ms1}:"),
        None,
        "an empty tag makes Redis hash the whole key"
    );
    assert_eq!(
        hash_tag("ms1{:"),
        None,
        "the tag must close inside the prefix"
    );
    assert_eq!(hash_tag("ms1}{x}:"), Some("x"));
}

#[test]
fn a_cluster_needs_its_nodes_and_a_hash_tag_in_the_prefix() {
    let mut s = Settings::default();
    s.redis.cluster = true;
    s.redis.prefix = "{ms1}:".into();
    assert_eq!(s.validate().unwrap_err().key, "redis.url", "no nodes");
    s.redis.url = "redis://10.0.0.1:6379, redis://:secret@10.0.0.2:6379".into();
    s.validate().unwrap();
    s.redis.url = "redis://10.0.0.1:6379,unix:///run/redis.sock".into();
    let e = s.validate().unwrap_err();
    assert_eq!(e.key, "redis.url");
    assert!(e.problem.contains("node 2"), "{e}");
    s.redis.url = "redis://:secret@10.0.0.1:6379,".into();
    let e = s.validate().unwrap_err();
    assert!(!e.problem.contains("secret"), "{e}");
    s.redis.url = "redis://10.0.0.1:6379".into();
    for untagged in ["ms1:", "{}:ms1:", "ms1{:"] {
        s.redis.prefix = untagged.into();
        let e = s.validate().unwrap_err();
        assert_eq!(e.key, "redis.prefix", "{untagged}");
        assert!(e.problem.contains("hash tag"), "{e}");
    }
    s.redis.prefix = "app:{ms1}:".into();
    s.validate().unwrap();
}

#[test]
fn redis_tls_files_and_passwords_are_checked_by_key() {
    let dir = std::env::temp_dir().join(format!("ms1-redis-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pem = dir.join("ca.pem");
    // Any base64 body parses as a PEM block; validation checks the form, not the CA.
    std::fs::write(
        &pem,
        "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let pem = pem.display().to_string();
    let mut s = Settings::default();
    s.redis.url = "rediss://:pw@redis.example.com:6380".into();
    s.validate().unwrap();
    s.redis.ca_file = "/nonexistent/ca.pem".into();
    assert_eq!(s.validate().unwrap_err().key, "redis.ca_file");
    s.redis.ca_file = dir.display().to_string();
    assert_eq!(
        s.validate().unwrap_err().key,
        "redis.ca_file",
        "a directory"
    );
    s.redis.ca_file = pem.clone();
    s.validate().unwrap();
    s.redis.client_cert = pem.clone();
    assert_eq!(s.validate().unwrap_err().key, "redis.client_cert", "no key");
    s.redis.client_key = "/etc/ms1/client.key".into();
    let e = s.validate().unwrap_err();
    assert_eq!(e.key, "redis.client_key", "a path is not a key");
    assert!(!e.problem.contains("/etc/ms1"), "{e}");
    s.redis.client_key = "-----BEGIN PRIVATE KEY-----\nx\n-----END PRIVATE KEY-----".into();
    s.validate().unwrap();
    s.redis.password = "other".into();
    assert_eq!(s.validate().unwrap_err().key, "redis.password", "differs");
    s.redis.password = "pw".into();
    s.validate().unwrap();
    assert_eq!(s.redis.resolved_password().unwrap().as_deref(), Some("pw"));
    s.redis.url = "redis://redis.example.com:6379".into();
    assert_eq!(
        s.validate().unwrap_err().key,
        "redis.ca_file",
        "TLS files need rediss://"
    );
    let debug = format!("{:?}", s.redis);
    assert!(
        !debug.contains("PRIVATE KEY") && !debug.contains("\"pw\""),
        "{debug}"
    );
    let mut s = Settings::default();
    s.redis.password = "pw".into();
    assert_eq!(
        s.validate().unwrap_err().key,
        "redis.password",
        "private redis"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn several_nodes_without_cluster_are_refused() {
    let mut s = Settings::default();
    s.redis.url = "redis://10.0.0.1:6379,redis://10.0.0.2:6379".into();
    let e = s.validate().unwrap_err();
    assert_eq!(e.key, "redis.url");
    assert!(e.problem.contains("redis.cluster = true"), "{e}");
}

fn tenant(name: &str, secret: &str, mailboxes: &[&str]) -> GraphTenant {
    GraphTenant {
        name: name.into(),
        tenant_id: format!("{name}-id"),
        client_id: format!("{name}-app"),
        client_secret: secret.into(),
        mailboxes: mailboxes.iter().map(|m| m.to_string()).collect(),
        ..Default::default()
    }
}

#[test]
fn the_single_tenant_keys_are_one_tenant_and_tenants_entries_several() {
    let mut g = GraphSettings::default();
    assert!(g.tenants().is_empty(), "no mailbox, no tenant");
    g.tenant_id = "contoso-id".into();
    g.client_id = "app".into();
    g.client_secret = "s".into();
    g.mailboxes = vec!["ap@contoso.example".into()];
    let one = g.tenants();
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].name, "contoso-id");
    assert_eq!(one[0].mailboxes, g.mailboxes);
    assert_eq!(one[0].app(), "app");

    let mut g = GraphSettings {
        tenants: vec![
            tenant("contoso", "a", &["ap@contoso.example"]),
            GraphTenant {
                name: String::new(),
                ..tenant(
                    "fabrikam",
                    "b",
                    &["ap@fabrikam.example", "ar@fabrikam.example"],
                )
            },
        ],
        ..Default::default()
    };
    let names: Vec<String> = g.tenants().into_iter().map(|t| t.name).collect();
    assert_eq!(
        names,
        ["contoso", "fabrikam-id"],
        "an unnamed entry is its tenant_id"
    );
    assert_eq!(
        g.all_mailboxes(),
        [
            "ap@contoso.example",
            "ap@fabrikam.example",
            "ar@fabrikam.example"
        ]
    );
    let s = Settings {
        graph: g.clone(),
        ..Default::default()
    };
    s.validate().unwrap();
    // A managed identity without a client id draws on a budget of its own tenant.
    g.tenants[0].credential = GraphCredential::ManagedIdentity;
    assert_eq!(g.tenants()[0].app(), "managed-identity:contoso");
}

#[test]
fn tenants_that_cannot_work_are_refused_naming_the_entry() {
    let refused = |tenants: Vec<GraphTenant>, change: &dyn Fn(&mut GraphSettings)| {
        let mut s = Settings::default();
        s.graph.tenants = tenants;
        change(&mut s.graph);
        s.validate().unwrap_err()
    };
    let two = || {
        vec![
            tenant("contoso", "a", &["ap@contoso.example"]),
            tenant("fabrikam", "b", &["ap@fabrikam.example"]),
        ]
    };
    let e = refused(two(), &|g| g.tenants[1].client_secret = Secret::default());
    assert_eq!(e.key, "graph.tenants[1].client_secret");
    let e = refused(two(), &|g| {
        g.tenants[1].mailboxes = vec!["AP@contoso.example".into()]
    });
    assert_eq!(e.key, "graph.tenants[1].mailboxes");
    assert!(e.problem.contains("tenant \"contoso\""), "{}", e.problem);
    let e = refused(two(), &|g| g.tenants[1].name = "contoso".into());
    assert_eq!(e.key, "graph.tenants[1].name");
    let e = refused(two(), &|g| g.tenants[0].mailboxes.clear());
    assert_eq!(e.key, "graph.tenants[0].mailboxes");
    let e = refused(two(), &|g| {
        g.tenants[0].cloud = GraphCloud::Usgov;
        g.tenants[0].base_url = "https://graph.microsoft.com/v1.0".into();
    });
    assert_eq!(e.key, "graph.tenants[0].base_url");
    // The shorthand and the entries at once: which is meant cannot be told.
    let e = refused(two(), &|g| g.mailboxes = vec!["x@contoso.example".into()]);
    assert_eq!(e.key, "graph.tenants");
    let e = refused(two(), &|g| g.client_id = "app".into());
    assert_eq!(e.key, "graph.tenants");
    let e = refused(
        vec![GraphTenant {
            tenant_id: String::new(),
            name: String::new(),
            credential: GraphCredential::ManagedIdentity,
            ..tenant("x", "", &["m@x.example"])
        }],
        &|_| {},
    );
    assert_eq!(e.key, "graph.tenants[0].name");
}
