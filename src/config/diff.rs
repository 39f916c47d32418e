//! Which keys differ between two configurations, by their dotted names.
//!
//! SIGHUP reload decides per key what it can apply live and names the rest in the log;
//! an operator then reads `publish.socket` rather than "something changed". Each
//! section is destructured in full, so a field added to a section without a name here
//! fails to compile instead of being silently ignored by reload.

use super::{
    Config, EngineConfig, LogConfig, MaskConfig, PromptsConfig, PruningConfig, PublishConfig,
    SourceConfig,
};

/// The dotted keys whose values differ between `old` and `new`, in file order.
pub fn changed_keys(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut out = Vec::new();
    let mut key = |name: &'static str, differs: bool| {
        if differs {
            out.push(name);
        }
    };

    let SourceConfig {
        pipeline,
        looping,
        resize,
        frame_timeout,
        backoff_initial,
        backoff_max,
    } = &old.source;
    let n = &new.source;
    key("source.pipeline", *pipeline != n.pipeline);
    key("source.loop", *looping != n.looping);
    key("source.resize", *resize != n.resize);
    key("source.frame_timeout_ms", *frame_timeout != n.frame_timeout);
    key(
        "source.backoff_initial_ms",
        *backoff_initial != n.backoff_initial,
    );
    key("source.backoff_max_ms", *backoff_max != n.backoff_max);

    let EngineConfig {
        manifest,
        threads,
        sparse_kernel,
        fused_ops,
        device,
        pruning,
    } = &old.engine;
    let n = &new.engine;
    key("engine.manifest", *manifest != n.manifest);
    key("engine.threads", *threads != n.threads);
    key("engine.sparse_kernel", *sparse_kernel != n.sparse_kernel);
    key("engine.fused_ops", *fused_ops != n.fused_ops);
    key("engine.device", *device != n.device);
    let PruningConfig {
        schedule,
        scorer,
        merge,
    } = pruning;
    let n = &n.pruning;
    key("pruning.schedule", *schedule != n.schedule);
    key("pruning.scorer", *scorer != n.scorer);
    key("pruning.merge", *merge != n.merge);

    let PromptsConfig {
        text,
        mask_threshold,
        score_threshold,
        max_prompts,
    } = &old.prompts;
    let n = &new.prompts;
    key("prompts.text", *text != n.text);
    key(
        "prompts.mask_threshold",
        *mask_threshold != n.mask_threshold,
    );
    key(
        "prompts.score_threshold",
        *score_threshold != n.score_threshold,
    );
    key("prompts.max_prompts", *max_prompts != n.max_prompts);

    let MaskConfig {
        width,
        height,
        encoding,
    } = &old.masks;
    let n = &new.masks;
    key("masks.width", *width != n.width);
    key("masks.height", *height != n.height);
    key("masks.encoding", *encoding != n.encoding);

    publish_keys(&old.publish, &new.publish, &mut key);

    let LogConfig { level } = &old.log;
    key("log.level", *level != new.log.level);
    out
}

/// `[publish]` by name; any difference not covered by a named key is still reported,
/// as the section, so reload never calls a changed section unchanged.
fn publish_keys(
    old: &PublishConfig,
    new: &PublishConfig,
    key: &mut impl FnMut(&'static str, bool),
) {
    let named = [
        ("publish.socket", old.socket != new.socket),
        ("publish.mode", old.mode != new.mode),
        ("publish.group", old.group != new.group),
        ("publish.max_clients", old.max_clients != new.max_clients),
        ("publish.queue_depth", old.queue_depth != new.queue_depth),
        ("publish.allow_uids", old.allow_uids != new.allow_uids),
        ("publish.allow_gids", old.allow_gids != new.allow_gids),
    ];
    let any_named = named.iter().any(|(_, d)| *d);
    for (name, differs) in named {
        key(name, differs);
    }
    key("publish", !any_named && old != new);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn base() -> Config {
        let text = r#"
[source]
pipeline = "videotestsrc"
[engine]
manifest = "m.toml"
[prompts]
text = ["a"]
[publish]
socket = "/tmp/x.sock"
"#;
        super::super::parse(text, Path::new("/etc/maskd/maskd.toml")).unwrap()
    }

    #[test]
    fn equal_configs_have_no_changed_keys() {
        assert!(changed_keys(&base(), &base()).is_empty());
    }

    #[test]
    fn every_changed_key_is_named_in_file_order() {
        let old = base();
        let mut new = base();
        new.source.pipeline = "v4l2src".into();
        new.engine.threads = 4;
        new.prompts.text.push("b".into());
        new.prompts.score_threshold = Some(0.3);
        new.masks.encoding = crate::config::MaskEncoding::Bitmask;
        new.publish.socket = "/tmp/y.sock".into();
        new.log.level = log::LevelFilter::Debug;
        assert_eq!(
            changed_keys(&old, &new),
            [
                "source.pipeline",
                "engine.threads",
                "prompts.text",
                "prompts.score_threshold",
                "masks.encoding",
                "publish.socket",
                "log.level"
            ]
        );
    }
}
