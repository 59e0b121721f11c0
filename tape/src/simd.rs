//! The instruction sets the CPU kernels run with, chosen at run time.
//!
//! The element-wise and reduction kernels of the CPU backend are compiled three times on x86-64:
//! for AVX-512 (F, BW, DQ, VL), for AVX2 with FMA, and for the baseline the binary targets
//! (SSE2); each call runs the widest build the CPU has. Every build computes the same
//! operations in the same order (no fused multiply-add is formed from a separate multiply and
//! add, reductions keep their lanes), so **results are the same bits at every level**; only the
//! speed differs. The matrix products (the `gemm` crate) choose their own microkernels the same
//! way and are not affected by the level set here.
//!
//! Like PyTorch's `ATEN_CPU_CAPABILITY`, the environment variable `TAPE_CPU_SIMD`
//! (`baseline`, `avx2` or `avx512`) caps the level for a process; [`set_simd_level`] changes it
//! while running (for comparisons and tests).
//!
//! bf16 convolutions and bf16-valued products run on the CPU's bf16 matrix units (Intel AMX)
//! where it has them ([`bf16_matrix_units`]), apart from the levels: `TAPE_CPU_AMX=0` or
//! [`set_bf16_matrix_units`] turns them off. Their sums run in another order than the `f32`
//! kernels' (the same bits on every thread count, other bits than without the units).

use crate::error::{Error, Result};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::OnceLock;

/// A CPU instruction-set level of the element-wise and reduction kernels, narrowest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SimdLevel {
    /// What the binary was compiled for (SSE2 on x86-64; every build on other CPUs).
    Baseline,
    /// AVX2 and FMA (x86-64-v3).
    Avx2,
    /// AVX-512 F, BW, DQ and VL (x86-64-v4).
    Avx512,
}

impl SimdLevel {
    /// Every level, narrowest first.
    pub const ALL: [SimdLevel; 3] = [SimdLevel::Baseline, SimdLevel::Avx2, SimdLevel::Avx512];

    /// The level's name as `TAPE_CPU_SIMD` spells it.
    pub fn name(self) -> &'static str {
        match self {
            SimdLevel::Baseline => "baseline",
            SimdLevel::Avx2 => "avx2",
            SimdLevel::Avx512 => "avx512",
        }
    }

    /// The level named `name` (`baseline`, `avx2` or `avx512`, any case).
    pub fn parse(name: &str) -> Result<SimdLevel> {
        SimdLevel::ALL
            .into_iter()
            .find(|l| l.name().eq_ignore_ascii_case(name.trim()))
            .ok_or_else(|| Error::InvalidArgument {
                op: "simd level",
                msg: format!("unknown level '{name}' (expected baseline, avx2 or avx512)"),
            })
    }

    fn from_u8(v: u8) -> SimdLevel {
        match v {
            2 => SimdLevel::Avx512,
            1 => SimdLevel::Avx2,
            _ => SimdLevel::Baseline,
        }
    }
}

impl std::fmt::Display for SimdLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The widest level this CPU supports (checked once).
pub fn detected_simd_level() -> SimdLevel {
    static DETECTED: OnceLock<SimdLevel> = OnceLock::new();
    *DETECTED.get_or_init(detect)
}

#[cfg(target_arch = "x86_64")]
fn detect() -> SimdLevel {
    use std::arch::is_x86_feature_detected as has;
    if has!("avx512f") && has!("avx512bw") && has!("avx512dq") && has!("avx512vl") {
        SimdLevel::Avx512
    } else if has!("avx2") && has!("fma") {
        SimdLevel::Avx2
    } else {
        SimdLevel::Baseline
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> SimdLevel {
    SimdLevel::Baseline
}

/// The level in force, plus one (0: not yet read from the CPU and the environment).
static LEVEL: AtomicU8 = AtomicU8::new(0);

/// The level the CPU kernels run with now: the detected one, capped by `TAPE_CPU_SIMD` (an
/// unknown value is reported on standard error once and ignored) or by [`set_simd_level`].
pub fn simd_level() -> SimdLevel {
    match LEVEL.load(Ordering::Relaxed) {
        0 => {
            let level = initial_level();
            // Another thread may have set a level meanwhile: keep that one.
            let _ =
                LEVEL.compare_exchange(0, level as u8 + 1, Ordering::Relaxed, Ordering::Relaxed);
            SimdLevel::from_u8(LEVEL.load(Ordering::Relaxed) - 1)
        }
        v => SimdLevel::from_u8(v - 1),
    }
}

fn initial_level() -> SimdLevel {
    let detected = detected_simd_level();
    match std::env::var("TAPE_CPU_SIMD") {
        Ok(name) => match SimdLevel::parse(&name) {
            Ok(cap) => cap.min(detected),
            Err(e) => {
                eprintln!("TAPE_CPU_SIMD ignored: {e}");
                detected
            }
        },
        Err(_) => detected,
    }
}

/// Makes the CPU kernels run with `level` from now on, in every thread, and returns the level
/// that was in force. A level this CPU lacks is an error (nothing changes).
pub fn set_simd_level(level: SimdLevel) -> Result<SimdLevel> {
    let detected = detected_simd_level();
    if level > detected {
        return Err(Error::InvalidArgument {
            op: "set_simd_level",
            msg: format!("this CPU supports up to {detected}, not {level}"),
        });
    }
    let previous = simd_level();
    LEVEL.store(level as u8 + 1, Ordering::Relaxed);
    Ok(previous)
}

/// Runs `f` once at every level this CPU supports, narrowest first, and then restores the level
/// that was in force: for comparing the levels' results. The level is process-wide, so other
/// threads' kernels run at the level being tried meanwhile (with the same results).
pub fn for_each_supported_level<R>(mut f: impl FnMut(SimdLevel) -> R) -> Vec<(SimdLevel, R)> {
    let restore = simd_level();
    let runs = SimdLevel::ALL
        .into_iter()
        .filter(|&l| l <= detected_simd_level())
        .map(|level| {
            LEVEL.store(level as u8 + 1, Ordering::Relaxed);
            (level, f(level))
        })
        .collect();
    LEVEL.store(restore as u8 + 1, Ordering::Relaxed);
    runs
}

/// Whether 16-bit (bf16) matrix products run on this CPU's matrix units (Intel AMX: tiles of
/// bf16 pairs summed into `f32`): the CPU has them (AMX-BF16 with AVX-512), the OS granted
/// this process their state, `TAPE_CPU_AMX=0` did not switch them off and
/// [`set_bf16_matrix_units`] did not either. Without them the products of a bf16 policy run on
/// the `f32` kernels, with the same values but other bits (the sums' order differs).
pub fn bf16_matrix_units() -> bool {
    amx_present() && amx_switch().load(Ordering::Relaxed)
}

/// Lets bf16 matrix products use the matrix units (when present) or not, from now on and in
/// every thread; returns whether they were in use. For comparisons and tests.
pub fn set_bf16_matrix_units(on: bool) -> bool {
    let was = bf16_matrix_units();
    amx_switch().store(on, Ordering::Relaxed);
    was
}

fn amx_switch() -> &'static AtomicBool {
    static SWITCH: OnceLock<AtomicBool> = OnceLock::new();
    SWITCH.get_or_init(|| {
        let off = std::env::var("TAPE_CPU_AMX").is_ok_and(|v| v.trim() == "0");
        AtomicBool::new(!off)
    })
}

/// Whether this CPU has AMX-BF16 tiles (and AVX-512 F and BW, which packing for them uses)
/// and the OS granted this process their state (checked once).
fn amx_present() -> bool {
    static PRESENT: OnceLock<bool> = OnceLock::new();
    *PRESENT.get_or_init(detect_amx)
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn detect_amx() -> bool {
    use std::arch::is_x86_feature_detected as has;
    // CPUID leaf 7: EDX bit 22 is AMX-BF16, bit 24 AMX-TILE (the detection macro has no
    // stable names for them). Leaf 7 exists on every CPU with AVX-512 F, checked first.
    let amx = has!("avx512f") && {
        let edx = std::arch::x86_64::__cpuid_count(7, 0).edx;
        edx & (1 << 22) != 0 && edx & (1 << 24) != 0
    };
    if !(amx && has!("avx512bw")) {
        return false;
    }
    // Linux hands out the tile data state on request only (arch_prctl ARCH_REQ_XCOMP_PERM for
    // XFEATURE_XTILEDATA), for the whole process.
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: the request reads no memory of ours; failure is reported as a negative result.
    unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        ) == 0
    }
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn detect_amx() -> bool {
    false
}

/// Defines a kernel function that runs its body compiled for the widest [`SimdLevel`] in force.
///
/// `$body` is an `#[inline(always)]` function with the same arguments, generic over lifetimes and
/// one element type `T: Elem` (or over lifetimes alone, with no type); the defined function takes the same arguments and calls the AVX-512, the
/// AVX2 or the baseline build of it. Closures passed in (`impl Fn` arguments) are inlined into
/// each build.
macro_rules! widest_simd {
    ($(#[$doc:meta])* $vis:vis fn $name:ident<$($lt:lifetime,)* $T:ident>($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? = $body:ident;) => {
        $(#[$doc])*
        $vis fn $name<$($lt,)* $T: $crate::dtype::Elem>($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
                fn avx512<$($lt,)* $T: $crate::dtype::Elem>($($arg: $ty),*) $(-> $ret)? {
                    $body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                fn avx2<$($lt,)* $T: $crate::dtype::Elem>($($arg: $ty),*) $(-> $ret)? {
                    $body($($arg),*)
                }
                match $crate::simd::simd_level() {
                    // SAFETY: the level in force never exceeds what the CPU supports
                    // (`set_simd_level` and the start-up detection check it).
                    $crate::simd::SimdLevel::Avx512 => return unsafe { avx512($($arg),*) },
                    // SAFETY: as above.
                    $crate::simd::SimdLevel::Avx2 => return unsafe { avx2($($arg),*) },
                    $crate::simd::SimdLevel::Baseline => {}
                }
            }
            $body($($arg),*)
        }
    };
    // The same for a function with no element type.
    ($(#[$doc:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? = $body:ident;) => {
        $(#[$doc])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
                fn avx512($($arg: $ty),*) $(-> $ret)? {
                    $body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                fn avx2($($arg: $ty),*) $(-> $ret)? {
                    $body($($arg),*)
                }
                match $crate::simd::simd_level() {
                    // SAFETY: the level in force never exceeds what the CPU supports
                    // (`set_simd_level` and the start-up detection check it).
                    $crate::simd::SimdLevel::Avx512 => return unsafe { avx512($($arg),*) },
                    // SAFETY: as above.
                    $crate::simd::SimdLevel::Avx2 => return unsafe { avx2($($arg),*) },
                    $crate::simd::SimdLevel::Baseline => {}
                }
            }
            $body($($arg),*)
        }
    };
}
pub(crate) use widest_simd;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_parse_and_print_their_names() {
        for level in SimdLevel::ALL {
            assert_eq!(SimdLevel::parse(level.name()).unwrap(), level);
            assert_eq!(level.to_string(), level.name());
        }
        assert_eq!(SimdLevel::parse(" AVX2 ").unwrap(), SimdLevel::Avx2);
        let err = SimdLevel::parse("sse9").unwrap_err().to_string();
        assert!(err.contains("sse9") && err.contains("avx512"), "{err}");
    }

    #[test]
    fn a_level_the_cpu_lacks_is_refused() {
        let detected = detected_simd_level();
        assert!(simd_level() <= detected);
        if let Some(&wider) = SimdLevel::ALL.iter().find(|&&l| l > detected) {
            let err = set_simd_level(wider).unwrap_err().to_string();
            assert!(err.contains(wider.name()), "{err}");
            assert!(simd_level() <= detected);
        } else {
            println!("this CPU has every level: nothing to refuse");
        }
    }
}
