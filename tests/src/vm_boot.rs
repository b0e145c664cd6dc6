//! Reading what `twinbox vm boot` logs: the summary line of a clean run
//! (`vm boot: guest stopped (Reboot); boot timer: 12.345 ms (CLOCK_MONOTONIC 123 ns); ran
//! 20.000 ms`), in the text or the JSON log format.

/// The summary of a clean `twinbox vm boot` run.
#[derive(Debug, Clone, PartialEq)]
pub struct VmSummary {
    /// Why the guest stopped (`Reboot`, `Shutdown`, `Halt`).
    pub reason: String,
    /// VMM start to the guest's boot-timer write, in ms; `None` when the guest wrote none.
    pub boot_timer_ms: Option<f64>,
    /// CLOCK_MONOTONIC of that write, in ns.
    pub boot_clock_ns: Option<u128>,
    /// VMM start to the guest's stop, in ms.
    pub ran_ms: f64,
}

/// The text between `start` and the next `end` in `text`.
fn between<'a>(text: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let rest = &text[text.find(start)? + start.len()..];
    Some(&rest[..rest.find(end)?])
}

impl VmSummary {
    /// The last summary in `log` (stderr with `--debug`, or a `--log` file).
    pub fn find(log: &str) -> Option<Self> {
        log.lines().rev().find_map(Self::parse_line)
    }

    fn parse_line(line: &str) -> Option<Self> {
        let reason = between(line, "guest stopped (", ")")?.to_string();
        let timer = between(line, "boot timer: ", ";")?;
        let (boot_timer_ms, boot_clock_ns) = if timer == "not signalled" {
            (None, None)
        } else {
            (
                Some(between(timer, "", " ms")?.parse().ok()?),
                Some(between(timer, "CLOCK_MONOTONIC ", " ns")?.parse().ok()?),
            )
        };
        let ran_ms = between(line, "; ran ", " ms")?.parse().ok()?;
        Some(Self {
            reason,
            boot_timer_ms,
            boot_clock_ns,
            ran_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_parse_from_text_and_json_logs() {
        let text = "time=\"t\" level=debug msg=\"vmm: built\"\n\
                    time=\"t\" level=info msg=\"vm boot: guest stopped (Reboot); boot timer: 12.5 ms (CLOCK_MONOTONIC 99 ns); ran 20.250 ms\"\n";
        assert_eq!(
            VmSummary::find(text),
            Some(VmSummary {
                reason: "Reboot".into(),
                boot_timer_ms: Some(12.5),
                boot_clock_ns: Some(99),
                ran_ms: 20.25,
            })
        );
        let json = r#"{"level":"info","msg":"vm boot: guest stopped (Halt); boot timer: not signalled; ran 3.000 ms","time":"t"}"#;
        let summary = VmSummary::find(json).unwrap();
        assert_eq!(
            (summary.reason.as_str(), summary.boot_timer_ms),
            ("Halt", None)
        );
        assert_eq!(VmSummary::find("twinbox: vm boot: cannot open"), None);
    }
}
