//! Unit tests of loading, parsing and validation; they feed strings to
//! `parse` and load the shipped files in `configs/`.

use super::raw::MAX_PROMPT_BYTES;
use super::*;

const FULL: &str = r#"
[source]
pipeline = "videotestsrc is-live=true pattern=ball"
loop = true
resize = "stretch"
frame_timeout_ms = 3000
backoff_initial_ms = 250
backoff_max_ms = 10000

[engine]
manifest = "../models/default.toml"
threads = 2
sparse_kernel = "dense"
fused_ops = false
device = "cpu"

[prompts]
text = ["red circle", "blue square"]
mask_threshold = 0.4
score_threshold = 0.6
max_prompts = 8

[masks]
width = 160
height = 120
encoding = "coco-rle"

[publish]
socket = "/run/maskd/maskd.sock"
mode = "0660"
group = "video"
max_clients = 16
queue_depth = 4
allow_uids = [0, 1000]
allow_gids = [44]

[log]
level = "debug"

[pruning]
schedule = [{ after_block = 2, keep = 0.6 }, { after_block = 5, keep = 0.5 }]
scorer = "attention"
merge = false
"#;

const MINIMAL: &str = r#"
[source]
pipeline = "videotestsrc"
[engine]
manifest = "model.toml"
[prompts]
text = ["cup"]
"#;

fn etc() -> &'static Path {
    Path::new("/etc/maskd/maskd.toml")
}

/// `FULL` with `from` replaced by `to`; panics if `from` is absent so a
/// test cannot silently check the unmodified file.
fn full_with(from: &str, to: &str) -> String {
    assert!(FULL.contains(from), "test bug: {from:?} not in FULL");
    FULL.replacen(from, to, 1)
}

fn invalid(text: &str) -> (String, String) {
    match parse(text, etc()) {
        Err(ConfigError::Invalid { key, reason, .. }) => (key, reason),
        other => panic!("expected Invalid, got {other:?}"),
    }
}

fn syntax(text: &str) -> (Option<(usize, usize)>, Option<String>, String) {
    match parse(text, etc()) {
        Err(ConfigError::Syntax {
            position,
            key,
            message,
            ..
        }) => (position, key, message),
        other => panic!("expected Syntax, got {other:?}"),
    }
}

#[test]
fn full_file_parses_into_typed_config() {
    let cfg = parse(FULL, etc()).unwrap();
    let expected = Config {
        path: etc().to_path_buf(),
        source: SourceConfig {
            pipeline: "videotestsrc is-live=true pattern=ball".into(),
            looping: true,
            resize: ResizeMode::Stretch,
            frame_timeout: Duration::from_secs(3),
            backoff_initial: Duration::from_millis(250),
            backoff_max: Duration::from_secs(10),
        },
        engine: EngineConfig {
            manifest: PathBuf::from("/etc/maskd/../models/default.toml"),
            threads: 2,
            sparse_kernel: SparseKernel::Dense,
            fused_ops: false,
            device: Device::Cpu,
            pruning: PruningConfig {
                schedule: vec![
                    PruneStep {
                        after_block: 2,
                        keep: 0.6,
                    },
                    PruneStep {
                        after_block: 5,
                        keep: 0.5,
                    },
                ],
                scorer: TokenScorer::Attention,
                merge: false,
            },
        },
        prompts: PromptsConfig {
            text: vec!["red circle".into(), "blue square".into()],
            mask_threshold: Some(0.4),
            score_threshold: Some(0.6),
            max_prompts: 8,
        },
        masks: MaskConfig {
            width: 160,
            height: 120,
            encoding: MaskEncoding::CocoRle,
        },
        publish: PublishConfig {
            socket: PathBuf::from("/run/maskd/maskd.sock"),
            mode: 0o660,
            group: Some("video".into()),
            max_clients: 16,
            queue_depth: 4,
            allow_uids: Some(vec![0, 1000]),
            allow_gids: Some(vec![44]),
        },
        log: LogConfig {
            level: log::LevelFilter::Debug,
        },
    };
    assert_eq!(cfg, expected);
}

#[test]
fn omitted_keys_take_the_named_defaults() {
    let cfg = parse(MINIMAL, etc()).unwrap();
    assert_eq!(cfg.source.looping, DEFAULT_LOOPING);
    assert_eq!(cfg.source.resize, DEFAULT_RESIZE);
    assert_eq!(
        cfg.source.frame_timeout.as_millis() as u64,
        DEFAULT_FRAME_TIMEOUT_MS
    );
    assert_eq!(
        cfg.source.backoff_initial.as_millis() as u64,
        DEFAULT_BACKOFF_INITIAL_MS
    );
    assert_eq!(
        cfg.source.backoff_max.as_millis() as u64,
        DEFAULT_BACKOFF_MAX_MS
    );
    assert_eq!(cfg.engine.threads, DEFAULT_THREADS);
    assert_eq!(cfg.engine.sparse_kernel, DEFAULT_SPARSE_KERNEL);
    assert_eq!(cfg.engine.device, Device::Auto);
    assert!(cfg.engine.fused_ops);
    assert_eq!(cfg.prompts.mask_threshold, None);
    assert_eq!(cfg.prompts.score_threshold, None);
    assert_eq!(cfg.prompts.max_prompts, DEFAULT_MAX_PROMPTS);
    assert_eq!(
        (cfg.masks.width, cfg.masks.height, cfg.masks.encoding),
        (
            DEFAULT_MASK_WIDTH,
            DEFAULT_MASK_HEIGHT,
            DEFAULT_MASK_ENCODING
        )
    );
    assert_eq!(cfg.publish.socket, PathBuf::from(DEFAULT_SOCKET));
    assert_eq!(cfg.publish.mode, 0o660);
    assert_eq!(cfg.publish.group, None);
    assert_eq!(cfg.publish.max_clients, DEFAULT_MAX_CLIENTS);
    assert_eq!(cfg.publish.queue_depth, DEFAULT_QUEUE_DEPTH);
    assert_eq!(
        cfg.publish.allow_uids, None,
        "everyone who can open the socket"
    );
    assert_eq!(cfg.publish.allow_gids, None);
    assert_eq!(cfg.log.level, DEFAULT_LOG_LEVEL);
}

#[test]
fn relative_paths_resolve_against_the_config_directory() {
    let text = MINIMAL.replace("[prompts]", "[publish]\nsocket = \"run/m.sock\"\n[prompts]");
    let cfg = parse(&text, Path::new("/srv/cam/maskd.toml")).unwrap();
    assert_eq!(cfg.engine.manifest, PathBuf::from("/srv/cam/model.toml"));
    assert_eq!(cfg.publish.socket, PathBuf::from("/srv/cam/run/m.sock"));

    // A relative config path is anchored at the working directory now.
    let cwd = std::env::current_dir().unwrap();
    let cfg = parse(&text, Path::new("configs/cam0.toml")).unwrap();
    assert_eq!(cfg.engine.manifest, cwd.join("configs").join("model.toml"));
    assert_eq!(cfg.path, PathBuf::from("configs/cam0.toml"));
    let cfg = parse(&text, Path::new("bare.toml")).unwrap();
    assert_eq!(cfg.engine.manifest, cwd.join("model.toml"));
}

#[test]
fn absolute_paths_are_kept() {
    let text = MINIMAL.replace("model.toml", "/opt/models/m.toml");
    let cfg = parse(&text, etc()).unwrap();
    assert_eq!(cfg.engine.manifest, PathBuf::from("/opt/models/m.toml"));
}

#[test]
fn config_dir_expands_in_the_pipeline() {
    let text = MINIMAL.replace(
        "\"videotestsrc\"",
        "\"filesrc location=${config_dir}/../clip.webm ! decodebin # ${config_dir}\"",
    );
    let cfg = parse(&text, etc()).unwrap();
    assert_eq!(
        cfg.source.pipeline,
        "filesrc location=/etc/maskd/../clip.webm ! decodebin # /etc/maskd"
    );
}

#[test]
fn unknown_or_unterminated_variables_are_rejected() {
    let text = MINIMAL.replace("\"videotestsrc\"", "\"filesrc location=${config_dri}/x\"");
    let (key, reason) = invalid(&text);
    assert_eq!(key, "source.pipeline");
    assert!(
        reason.contains("unknown variable `${config_dri}`"),
        "{reason}"
    );

    let text = MINIMAL.replace("\"videotestsrc\"", "\"filesrc location=${config_dir/x\"");
    let (key, reason) = invalid(&text);
    assert_eq!(key, "source.pipeline");
    assert!(reason.contains("unterminated"), "{reason}");
}

#[test]
fn error_message_names_file_key_and_reason() {
    let text = full_with("width = 160", "width = 0");
    let err = parse(&text, Path::new("configs/x.toml")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "configs/x.toml: masks.width: 0 is out of range 1..=4096"
    );
    let text = full_with(r#"text = ["red circle", "blue square"]"#, "text = []");
    let err = parse(&text, Path::new("configs/cam0.toml")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "configs/cam0.toml: prompts.text: must not be empty"
    );
}

#[test]
fn every_range_rule_is_enforced() {
    let cases = [
        (
            "frame_timeout_ms = 3000",
            "frame_timeout_ms = 0",
            "source.frame_timeout_ms",
        ),
        (
            "backoff_initial_ms = 250",
            "backoff_initial_ms = 0",
            "source.backoff_initial_ms",
        ),
        (
            "backoff_max_ms = 10000",
            "backoff_max_ms = 0",
            "source.backoff_max_ms",
        ),
        ("threads = 2", "threads = 0", "engine.threads"),
        ("threads = 2", "threads = 1000", "engine.threads"),
        ("max_prompts = 8", "max_prompts = 0", "prompts.max_prompts"),
        ("width = 160", "width = 4097", "masks.width"),
        ("height = 120", "height = 0", "masks.height"),
        ("max_clients = 16", "max_clients = 0", "publish.max_clients"),
        ("queue_depth = 4", "queue_depth = 0", "publish.queue_depth"),
    ];
    for (from, to, want) in cases {
        let (key, reason) = invalid(&full_with(from, to));
        assert_eq!(key, want, "{to}");
        assert!(reason.contains("is out of range"), "{to}: {reason}");
    }
}

#[test]
fn backoff_max_must_not_be_below_initial() {
    let (key, reason) = invalid(&full_with("backoff_max_ms = 10000", "backoff_max_ms = 100"));
    assert_eq!(key, "source.backoff_max_ms");
    assert!(
        reason.contains("below source.backoff_initial_ms (250)"),
        "{reason}"
    );
}

#[test]
fn pipeline_must_be_a_usable_fragment() {
    let (key, reason) = invalid(&MINIMAL.replace("\"videotestsrc\"", "\"  \""));
    assert_eq!(
        (key.as_str(), reason.as_str()),
        ("source.pipeline", "must not be empty")
    );
    let (key, reason) = invalid(&MINIMAL.replace("\"videotestsrc\"", "\"videotestsrc !\""));
    assert_eq!(key, "source.pipeline");
    assert!(
        reason.contains("must not start or end with `!`"),
        "{reason}"
    );
}

#[test]
fn manifest_must_not_be_empty() {
    let (key, _) = invalid(&MINIMAL.replace("\"model.toml\"", "\"\""));
    assert_eq!(key, "engine.manifest");
}

#[test]
fn prompts_must_be_non_blank_unique_short_and_within_max() {
    let (key, reason) = invalid(&MINIMAL.replace(r#"["cup"]"#, r#"["cup", " "]"#));
    assert_eq!(
        (key.as_str(), reason.as_str()),
        ("prompts.text[1]", "must not be blank")
    );

    let (key, reason) = invalid(&MINIMAL.replace(r#"["cup"]"#, r#"["cup", "mug", "cup"]"#));
    assert_eq!(key, "prompts.text[2]");
    assert!(reason.contains("repeats prompts.text[0]"), "{reason}");

    let long = "x".repeat(MAX_PROMPT_BYTES + 1);
    let (key, reason) = invalid(&MINIMAL.replace(r#""cup""#, &format!("{long:?}")));
    assert_eq!(key, "prompts.text[0]");
    assert!(reason.contains("the limit is 256"), "{reason}");

    let text = full_with("max_prompts = 8", "max_prompts = 1");
    let (key, reason) = invalid(&text);
    assert_eq!(key, "prompts.max_prompts");
    assert!(reason.contains("fewer than the 2 prompts"), "{reason}");
}

#[test]
fn thresholds_must_be_probabilities() {
    for bad in ["0.0", "1.0", "1.5", "-0.1", "nan"] {
        let (key, _) = invalid(&full_with(
            "mask_threshold = 0.4",
            &format!("mask_threshold = {bad}"),
        ));
        assert_eq!(key, "prompts.mask_threshold", "{bad}");
        let (key, _) = invalid(&full_with(
            "score_threshold = 0.6",
            &format!("score_threshold = {bad}"),
        ));
        assert_eq!(key, "prompts.score_threshold", "{bad}");
    }
}

#[test]
fn socket_path_must_fit_sun_path() {
    let long = format!("/run/{}/m.sock", "d".repeat(120));
    let (key, reason) = invalid(&full_with(
        "\"/run/maskd/maskd.sock\"",
        &format!("{long:?}"),
    ));
    assert_eq!(key, "publish.socket");
    assert!(reason.contains("limited to 107"), "{reason}");
    let (key, _) = invalid(&full_with("\"/run/maskd/maskd.sock\"", "\"\""));
    assert_eq!(key, "publish.socket");
}

#[test]
fn mode_is_an_octal_string_someone_can_connect_with() {
    for (mode, want) in [
        ("\"0600\"", 0o600),
        ("\"0o666\"", 0o666),
        ("\"660\"", 0o660),
    ] {
        let cfg = parse(&full_with("\"0660\"", mode), etc()).unwrap();
        assert_eq!(cfg.publish.mode, want, "{mode}");
    }
    for (mode, reason) in [
        ("\"rw\"", "is not an octal mode"),
        ("\"0999\"", "is not an octal mode"),
        ("\"\"", "is not an octal mode"),
        ("\"01777\"", "is out of range 0000..=0777"),
        ("\"0444\"", "lets no one connect"),
    ] {
        let (key, got) = invalid(&full_with("\"0660\"", mode));
        assert_eq!(key, "publish.mode", "{mode}");
        assert!(got.contains(reason), "{mode}: {got}");
    }
    // A TOML integer is refused rather than misread (0o660 would be fine, 660 not).
    let (_, key, message) = syntax(&full_with("\"0660\"", "0o660"));
    assert_eq!(key.as_deref(), Some("publish.mode"));
    assert!(message.contains("expected a string"), "{message}");
}

#[test]
fn group_must_not_be_empty() {
    let (key, _) = invalid(&full_with("group = \"video\"", "group = \"\""));
    assert_eq!(key, "publish.group");
}

#[test]
fn allow_lists_take_numeric_ids_only_and_are_never_empty() {
    let cases = [
        (
            "allow_uids = [0, 1000]",
            "allow_uids = [\"robot\"]",
            "publish.allow_uids",
            "\"robot\" is not a number",
        ),
        (
            "allow_uids = [0, 1000]",
            "allow_uids = [-1]",
            "publish.allow_uids",
            "uid -1 is out of range",
        ),
        (
            "allow_uids = [0, 1000]",
            "allow_uids = [4294967295]",
            "publish.allow_uids",
            "out of range",
        ),
        (
            "allow_uids = [0, 1000]",
            "allow_uids = []",
            "publish.allow_uids",
            "is empty",
        ),
        (
            "allow_gids = [44]",
            "allow_gids = [1.5]",
            "publish.allow_gids",
            "1.5 is not a number",
        ),
        (
            "allow_gids = [44]",
            "allow_gids = []",
            "publish.allow_gids",
            "leave the key out",
        ),
    ];
    for (from, to, want_key, want_reason) in cases {
        let (key, reason) = invalid(&full_with(from, to));
        assert_eq!(key, want_key, "{to}");
        assert!(reason.contains(want_reason), "{to}: {reason}");
    }
    let only_gids = parse(&full_with("allow_uids = [0, 1000]\n", ""), etc()).unwrap();
    assert_eq!(
        (only_gids.publish.allow_uids, only_gids.publish.allow_gids),
        (None, Some(vec![44]))
    );
    let err = parse(
        &full_with("allow_uids = [0, 1000]", "allow_uids = [\"robot\"]"),
        etc(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("/etc/maskd/maskd.toml") && err.contains("publish.allow_uids"),
        "{err}"
    );
}

#[test]
fn unknown_key_is_named_with_its_table_and_position() {
    let text = full_with("manifest =", "modle =");
    let (position, key, message) = syntax(&text);
    assert_eq!(key.as_deref(), Some("engine.modle"));
    assert!(message.contains("unknown field `modle`"), "{message}");
    let line = FULL
        .lines()
        .position(|l| l.starts_with("manifest"))
        .unwrap()
        + 1;
    assert_eq!(position, Some((line, 1)));
    let shown = parse(&text, Path::new("configs/x.toml"))
        .unwrap_err()
        .to_string();
    assert!(
        shown.starts_with(&format!(
            "configs/x.toml:{line}:1: engine.modle: unknown field `modle`"
        )),
        "{shown}"
    );
}

#[test]
fn unknown_table_is_rejected() {
    let (_, key, message) = syntax(&format!("{MINIMAL}\n[extra]\nx = 1\n"));
    assert_eq!(key.as_deref(), Some("extra"));
    assert!(message.contains("unknown field `extra`"), "{message}");
}

#[test]
fn wrong_type_names_the_key() {
    let (_, key, message) = syntax(&full_with("threads = 2", "threads = \"two\""));
    assert_eq!(key.as_deref(), Some("engine.threads"));
    assert!(message.contains("invalid type"), "{message}");
    let (_, key, message) = syntax(&full_with("loop = true", "loop = \"yes\""));
    assert_eq!(key.as_deref(), Some("source.loop"));
    assert!(message.contains("invalid type"), "{message}");
    let (_, key, message) = syntax(&full_with("fused_ops = false", "fused_ops = 0"));
    assert_eq!(key.as_deref(), Some("engine.fused_ops"));
    assert!(message.contains("invalid type"), "{message}");
}

#[test]
fn unknown_enum_value_lists_the_choices() {
    let (_, key, message) = syntax(&full_with("\"stretch\"", "\"crop\""));
    assert_eq!(key.as_deref(), Some("source.resize"));
    assert!(
        message.contains("expected `letterbox` or `stretch`"),
        "{message}"
    );
    let (_, key, message) = syntax(&full_with("\"coco-rle\"", "\"png\""));
    assert_eq!(key.as_deref(), Some("masks.encoding"));
    assert!(message.contains("`coco-rle`"), "{message}");
    let (_, key, _) = syntax(&full_with("\"dense\"", "\"fast\""));
    assert_eq!(key.as_deref(), Some("engine.sparse_kernel"));
    let (_, key, message) = syntax(&full_with("device = \"cpu\"", "device = \"gpu\""));
    assert_eq!(key.as_deref(), Some("engine.device"));
    assert!(
        message.contains("expected one of `auto`, `cpu`, `cuda`"),
        "{message}"
    );
    let (_, key, _) = syntax(&full_with("\"debug\"", "\"loud\""));
    assert_eq!(key.as_deref(), Some("log.level"));
}

#[test]
fn missing_required_key_is_reported() {
    let (_, key, message) = syntax(&MINIMAL.replace("pipeline = \"videotestsrc\"", ""));
    assert!(message.contains("missing field `pipeline`"), "{message}");
    assert_eq!(key.as_deref(), Some("source"));
    let (_, _, message) = syntax(&MINIMAL.replace("[engine]\nmanifest = \"model.toml\"", ""));
    assert!(message.contains("missing field `engine`"), "{message}");
}

#[test]
fn toml_syntax_error_has_a_position() {
    let (position, _, _) = syntax("[source]\npipeline = \"unterminated\n");
    assert_eq!(position.map(|p| p.0), Some(2));
}

#[test]
fn load_names_a_missing_file() {
    let err = load(Path::new("/nonexistent/maskd.toml")).unwrap_err();
    let shown = format!("{err:#}");
    assert!(shown.contains("/nonexistent/maskd.toml"), "{shown}");
}

#[test]
fn every_shipped_config_parses() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let cfg = load(&path).unwrap_or_else(|e| panic!("{e:#}"));
            assert!(!cfg.prompts.text.is_empty(), "{}", path.display());
            seen += 1;
        }
    }
    assert!(
        seen >= 4,
        "expected at least 4 configs in {}",
        dir.display()
    );
}

#[test]
fn default_config_plays_the_bundled_clip_in_a_loop() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/default.toml");
    let cfg = load(&path).unwrap();
    let clip = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/../models/demo/clip.webm");
    assert!(cfg
        .source
        .pipeline
        .contains(&format!("location={}", clip.display())));
    assert!(cfg.source.looping);
    assert!(
        !cfg.publish.socket.starts_with("/run"),
        "demo must run without root"
    );
}

#[test]
fn no_pruning_section_is_no_schedule() {
    let cfg = parse(MINIMAL, etc()).unwrap();
    assert!(cfg.engine.pruning.is_off());
    assert_eq!(cfg.engine.pruning.scorer, DEFAULT_SCORER);
    assert!(!cfg.engine.pruning.merge);
}

/// Each rule a schedule must meet without a model: the step and field are named.
#[test]
fn pruning_schedule_rules_name_the_step_and_field() {
    let with = |schedule: &str| format!("{MINIMAL}\n[pruning]\nschedule = [{schedule}]\n");
    let cases = [
        (
            "{ after_block = 2, keep = 0.0 }",
            "pruning.schedule[0].keep",
            "0 must be in (0, 1]",
        ),
        (
            "{ after_block = 2, keep = -0.5 }",
            "pruning.schedule[0].keep",
            "-0.5 must be in (0, 1]",
        ),
        (
            "{ after_block = 1, keep = 0.5 }, { after_block = 3, keep = 1.5 }",
            "pruning.schedule[1].keep",
            "1.5 must be in (0, 1]",
        ),
        (
            "{ after_block = 4, keep = 0.5 }, { after_block = 4, keep = 0.5 }",
            "pruning.schedule[1].after_block",
            "4 does not follow the previous step's 4",
        ),
        (
            "{ after_block = 5, keep = 0.5 }, { after_block = 2, keep = 0.5 }",
            "pruning.schedule[1].after_block",
            "2 does not follow the previous step's 5",
        ),
        (
            "{ after_block = -1, keep = 0.5 }",
            "pruning.schedule[0].after_block",
            "-1 is not a block index",
        ),
    ];
    for (schedule, want_key, want_reason) in cases {
        let (key, reason) = invalid(&with(schedule));
        assert_eq!(key, want_key, "{schedule}");
        assert!(reason.starts_with(want_reason), "{schedule}: {reason}");
    }
    let err = parse(&with("{ after_block = 2, keep = 0.0 }"), etc())
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("/etc/maskd/maskd.toml: pruning.schedule[0].keep: 0 must be in (0, 1]"),
        "{err}"
    );
}

#[test]
fn pruning_keys_are_checked_by_serde() {
    let (_, key, message) = syntax(&format!("{MINIMAL}\n[pruning]\nscorer = \"entropy\"\n"));
    assert_eq!(key.as_deref(), Some("pruning.scorer"));
    assert!(message.contains("attention"), "{message}");
    let (_, key, _) = syntax(&format!(
        "{MINIMAL}\n[pruning]\nschedule = [{{ after_block = 1, kept = 0.5 }}]\n"
    ));
    assert_eq!(key.as_deref(), Some("pruning.schedule"));
}

#[test]
fn schedule_flag_spelling_round_trips_and_is_checked() {
    let steps = parse_schedule("2:0.6, 5:0.5").unwrap();
    assert_eq!(
        steps,
        [
            PruneStep {
                after_block: 2,
                keep: 0.6
            },
            PruneStep {
                after_block: 5,
                keep: 0.5
            }
        ]
    );
    assert_eq!(show_schedule(&steps), "2:0.6,5:0.5");
    assert_eq!(parse_schedule("1:0.5+4:0.5").unwrap().len(), 2);
    assert!(parse_schedule("none").unwrap().is_empty());
    assert_eq!(show_schedule(&[]), "none");
    assert_eq!(
        parse_schedule("3:0.5,2:0.5").unwrap_err(),
        "\"3:0.5,2:0.5\": step [1].after_block: 2 does not follow the previous step's 3: \
         steps must go in strictly increasing block order"
    );
    assert!(parse_schedule("2:0").unwrap_err().contains("[0].keep"));
    assert!(parse_schedule("2-0.5").unwrap_err().contains("BLOCK:KEEP"));
    assert!(parse_schedule("x:0.5")
        .unwrap_err()
        .contains("not a block index"));
}
