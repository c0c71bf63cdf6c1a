//! The configs users copy from must stay valid: the README's reference and deploy's example.

use std::path::Path;

use switchyard_node::Config;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the repo root")
}

#[test]
fn deploy_example_config_is_valid() {
    let cfg = Config::load(&repo().join("deploy/examples/node.toml")).unwrap();
    assert_eq!(cfg.apps.len(), 1);
}

#[test]
fn readme_configuration_reference_is_valid() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let start = readme.find("```toml\n").expect("README has a toml block") + 8;
    let len = readme[start..].find("```").unwrap();
    let text = &readme[start..start + len];
    let cfg = Config::parse(text, Some(Path::new("README.md"))).unwrap();
    assert_eq!(cfg.node.id, "edge-weu-1");
    assert_eq!(cfg.pools[0].origins.len(), 2);
    assert_eq!(cfg.load_balancers[0].default_pools, ["weu", "wnam"]);
}
