//! [`join`]: the world a program's `--dist` flag names.

use crate::error::Result;
use crate::group::ProcessGroup;
use std::str::FromStr;

/// Which world to join (`--dist` in the examples).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DistKind {
    /// This process alone.
    #[default]
    None,
    /// The world `mpirun` started (without `mpirun`: this process alone, through MPI).
    Mpi,
    /// The same world, its all-reduces and broadcasts on GPU `local rank` with NCCL.
    Nccl,
}

impl FromStr for DistKind {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "none" => Ok(DistKind::None),
            "mpi" => Ok(DistKind::Mpi),
            "nccl" => Ok(DistKind::Nccl),
            other => Err(format!(
                "unknown --dist '{other}': expected none, mpi or nccl"
            )),
        }
    }
}

/// Joins the world `kind` names: [`DistKind::Mpi`] needs the cargo feature `mpi`,
/// [`DistKind::Nccl`] the feature `nccl` (an error saying so without it); either can be joined
/// once per process.
pub fn join(kind: DistKind) -> Result<ProcessGroup> {
    match kind {
        DistKind::None => Ok(ProcessGroup::single()),
        DistKind::Mpi => join_mpi(),
        DistKind::Nccl => join_nccl(),
    }
}

#[cfg(feature = "nccl")]
fn join_nccl() -> Result<ProcessGroup> {
    let mpi = std::sync::Arc::new(crate::mpi_transport::MpiTransport::start()?);
    let nccl = crate::nccl_transport::NcclTransport::start(mpi)?;
    Ok(ProcessGroup::over(std::sync::Arc::new(nccl)))
}

#[cfg(not(feature = "nccl"))]
fn join_nccl() -> Result<ProcessGroup> {
    Err(crate::error::DistError::Join(
        "--dist nccl needs a build with the cargo feature `nccl` (and NCCL and Open MPI \
         installed)"
            .into(),
    ))
}

#[cfg(feature = "mpi")]
fn join_mpi() -> Result<ProcessGroup> {
    let transport = crate::mpi_transport::MpiTransport::start()?;
    Ok(ProcessGroup::over(std::sync::Arc::new(transport)))
}

#[cfg(not(feature = "mpi"))]
fn join_mpi() -> Result<ProcessGroup> {
    Err(crate::error::DistError::Join(
        "--dist mpi needs a build with the cargo feature `mpi` (and Open MPI installed)".into(),
    ))
}
