//! Where a container's creation spends its time, step by step: the agent
//! hands the steps to the host, whose `HUSK_TIMINGS` prints them.

use std::time::Instant;

pub use husk_wire::agent::Step;

pub struct Trace {
    last: Instant,
    steps: Vec<Step>,
}

impl Default for Trace {
    fn default() -> Self {
        Trace {
            last: Instant::now(),
            steps: Vec::new(),
        }
    }
}

impl Trace {
    /// Ends step `name`, which began where the one before ended.
    pub fn step(&mut self, name: &str) {
        let now = Instant::now();
        let micros = u64::try_from(now.duration_since(self.last).as_micros()).unwrap_or(u64::MAX);
        self.steps.push(Step {
            name: name.to_owned(),
            micros,
        });
        self.last = now;
    }

    pub fn into_steps(self) -> Vec<Step> {
        self.steps
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_follow_each_other() {
        let mut t = Trace::default();
        std::thread::sleep(std::time::Duration::from_millis(2));
        t.step("a");
        t.step("b");
        let steps = t.into_steps();
        let names: Vec<&str> = steps.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert!(steps[0].micros >= 2000 && steps[1].micros < steps[0].micros);
    }
}
