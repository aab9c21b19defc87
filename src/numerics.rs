//! libtorch's floating-point path on the CPU, pinned so that training is reproducible
//! across machines.
//!
//! libtorch picks its CPU kernels by the processor it runs on (ATen dispatches every
//! vectorised operation to a `default`, `avx2` or `avx512` build, read once from
//! `ATEN_CPU_CAPABILITY` or detected), and the MKL inside it picks its matrix-multiply
//! code path the same way (`MKL_CBWR`). Different paths sum in different orders, so the
//! same seed trains different weights on an AVX2 laptop and an AVX-512 server, and a
//! learning result measured on one machine is luck on the next.
//!
//! [`NumericPath::Reproducible`] (the default) sets `ATEN_CPU_CAPABILITY=default` and
//! `MKL_CBWR=COMPATIBLE` before libtorch first reads them, whatever the environment
//! says: the scalar ATen kernels and MKL's SSE2 branch, which give the same bits on every
//! x86-64 processor. [`NumericPath::Native`] (`LLMOS_NUMERICS=native` or
//! `--numerics native`) leaves both alone: faster on wide vector units, not reproducible
//! across processors. docs/benchmarks.md measures what pinning costs.
//!
//! Both variables are read by libtorch once, at its first operation, so [`pin`] must run
//! before any tensor exists. The binary calls it first thing in `main`; every place in the
//! crate that touches libtorch (the DQN agent, and through it checkpoint loading) calls it
//! again, which is a no-op after the first call, so library users and test binaries are
//! pinned too.

use std::sync::OnceLock;

/// The environment variable that chooses the numeric path (`reproducible` or `native`).
pub const ENV: &str = "LLMOS_NUMERICS";
/// ATen's variable for its CPU kernel build.
pub const ATEN_CPU_CAPABILITY: &str = "ATEN_CPU_CAPABILITY";
/// MKL's conditional numerical reproducibility branch.
pub const MKL_CBWR: &str = "MKL_CBWR";

/// Which floating-point path libtorch takes on the CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum NumericPath {
    /// Scalar ATen kernels and MKL's compatible branch: the same weights on every x86-64
    /// processor for the same seed.
    #[default]
    Reproducible,
    /// Whatever libtorch and MKL choose for this processor (or the environment says):
    /// faster, but training results differ between processors.
    Native,
}

/// A numeric path that cannot be read from its setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NumericsError {
    /// The value is not a known path.
    #[error("{variable}={value:?}: expected \"reproducible\" or \"native\"")]
    Unknown {
        /// Where the value came from (`LLMOS_NUMERICS`).
        variable: &'static str,
        /// The value given.
        value: String,
    },
    /// The variable holds bytes that are not UTF-8.
    #[error("{variable} is not valid UTF-8")]
    NotUnicode {
        /// The variable.
        variable: &'static str,
    },
}

impl NumericPath {
    /// The name used by `LLMOS_NUMERICS` and `--numerics`.
    pub fn as_str(self) -> &'static str {
        match self {
            NumericPath::Reproducible => "reproducible",
            NumericPath::Native => "native",
        }
    }

    /// Parses a `LLMOS_NUMERICS` value.
    pub fn parse(s: &str) -> Result<Self, NumericsError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "reproducible" | "" => Ok(NumericPath::Reproducible),
            "native" => Ok(NumericPath::Native),
            other => Err(NumericsError::Unknown { variable: ENV, value: other.to_string() }),
        }
    }

    /// The path `LLMOS_NUMERICS` asks for (reproducible when unset).
    pub fn from_env() -> Result<Self, NumericsError> {
        match std::env::var(ENV) {
            Ok(v) => Self::parse(&v),
            Err(std::env::VarError::NotPresent) => Ok(NumericPath::Reproducible),
            Err(std::env::VarError::NotUnicode(_)) => Err(NumericsError::NotUnicode { variable: ENV }),
        }
    }
}

/// The numeric path in force in this process, as fixed by the first [`pin`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pinned {
    /// The path chosen.
    pub path: NumericPath,
    /// `ATEN_CPU_CAPABILITY` as libtorch will read it (None: unset, libtorch detects).
    pub aten_cpu_capability: Option<String>,
    /// `MKL_CBWR` as MKL will read it (None: unset, MKL detects).
    pub mkl_cbwr: Option<String>,
    /// Values the environment had that the reproducible path replaced.
    pub overridden: Vec<(String, String)>,
}

impl Pinned {
    /// The path and the two variables libtorch reads, e.g.
    /// `reproducible (ATEN_CPU_CAPABILITY=default, MKL_CBWR=COMPATIBLE)`.
    pub fn settings(&self) -> String {
        let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "(detected)".into());
        format!(
            "{} ({ATEN_CPU_CAPABILITY}={}, {MKL_CBWR}={})",
            self.path.as_str(),
            show(&self.aten_cpu_capability),
            show(&self.mkl_cbwr)
        )
    }
}

impl std::fmt::Display for Pinned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.settings())?;
        for (k, v) in &self.overridden {
            write!(f, "; replaced {k}={v}")?;
        }
        Ok(())
    }
}

static PINNED: OnceLock<Pinned> = OnceLock::new();

/// Fixes libtorch's CPU numeric path for this process: `path` on the first call, the
/// path already fixed on every later one (which is returned either way). Must run before
/// libtorch's first operation to take effect; see the module documentation.
pub fn pin(path: NumericPath) -> &'static Pinned {
    PINNED.get_or_init(|| {
        let mut overridden = Vec::new();
        if path == NumericPath::Reproducible {
            for (var, want) in [(ATEN_CPU_CAPABILITY, "default"), (MKL_CBWR, "COMPATIBLE")] {
                if let Ok(old) = std::env::var(var) {
                    if old != want {
                        overridden.push((var.to_string(), old));
                    }
                }
                // Runs once, before libtorch exists, so nothing reads the environment
                // concurrently from C++.
                std::env::set_var(var, want);
            }
        }
        Pinned {
            path,
            aten_cpu_capability: std::env::var(ATEN_CPU_CAPABILITY).ok(),
            mkl_cbwr: std::env::var(MKL_CBWR).ok(),
            overridden,
        }
    })
}

/// [`pin`] with the path `LLMOS_NUMERICS` asks for; an invalid value is an error naming
/// the variable (and pins nothing).
pub fn pin_from_env() -> Result<&'static Pinned, NumericsError> {
    if let Some(p) = PINNED.get() {
        return Ok(p);
    }
    Ok(pin(NumericPath::from_env()?))
}

/// The path in force, if [`pin`] has run.
pub fn pinned() -> Option<&'static Pinned> {
    PINNED.get()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_two_paths_and_names_the_variable_on_garbage() {
        assert_eq!(NumericPath::parse("native"), Ok(NumericPath::Native));
        assert_eq!(NumericPath::parse(" Reproducible "), Ok(NumericPath::Reproducible));
        let e = NumericPath::parse("fast").unwrap_err().to_string();
        assert!(e.contains(ENV) && e.contains("fast"), "{e}");
    }
}
