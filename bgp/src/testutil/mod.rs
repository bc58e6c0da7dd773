//! Test and benchmark fixtures (feature `testutil`): a synthetic full Internet table and the
//! RFC 7606 malformed-UPDATE corpus. Deterministic, no I/O; never compiled into the daemon.

pub mod full_table;
pub mod malformed;

/// Small deterministic PRNG (xorshift64*): fixtures must be identical on every run and need
/// no external crate.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}
