//! Command-line entry points of the controller module.

/// Arguments of `llmos run`.
#[derive(clap::Args, Debug)]
pub struct RunArgs {}

/// Runs `llmos run`.
pub fn run(_args: RunArgs) -> anyhow::Result<()> {
    anyhow::bail!("`llmos run` is not built yet")
}

/// Prints the CRD YAML (`llmos crdgen`).
pub fn crdgen() -> anyhow::Result<()> {
    use kube::CustomResourceExt;
    print!("{}", serde_yaml::to_string(&crate::crd::LLMWorkload::crd())?);
    Ok(())
}
