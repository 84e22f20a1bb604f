//! The interrupt part of the bench report: raise-to-wake latency of the
//! card's TEST interrupt next to QEMU's edu device (through uio), by
//! stage, the sustained record rate, and synchronous versus asynchronous
//! I/O as a table, all from the guest's `xxcap-test bench-irq` and
//! `xxcap-test bench-sync-async` results.

use std::fmt::Write as _;

use serde::Serialize;

use xxcapture_results::Record;

pub use xxcapture_results::{IrqLatency, SyncAsyncRow, Unavailable};

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct InterruptReport {
    pub latency: Vec<IrqLatency>,
    pub unavailable: Vec<Unavailable>,
    pub sustained_events_per_s: Option<f64>,
    pub sustained_lost: Option<u64>,
    /// TEST raises per task file, and the records the run let go unread at
    /// most, of the sustained phase (0 when the guest did not say).
    pub sustained_burst: u64,
    pub sustained_unread_limit: u64,
    pub sync_async: Vec<SyncAsyncRow>,
    /// The lowest rate at which the asynchronous model wins, as the guest
    /// judged it ("max" or a number), if any.
    pub crossover: Option<String>,
}

impl InterruptReport {
    /// The interrupt and synchronous/asynchronous records of a run.
    pub fn new(records: &[Record]) -> Self {
        let mut r = InterruptReport::default();
        for record in records {
            match record {
                Record::IrqLatency(l) => r.latency.push(l.clone()),
                Record::IrqUnavailable(u) => r.unavailable.push(u.clone()),
                Record::IrqSustained(s) => {
                    r.sustained_events_per_s = Some(s.events_per_s);
                    r.sustained_lost = Some(s.lost);
                    r.sustained_burst = s.burst;
                    r.sustained_unread_limit = s.unread_limit;
                }
                Record::SyncAsync(row) => r.sync_async.push(row.clone()),
                Record::SyncAsyncCrossover(c) => r.crossover = c.rate.clone(),
                _ => {}
            }
        }
        r
    }

    fn find(&self, method: &str) -> Option<&IrqLatency> {
        self.latency.iter().find(|l| l.method == method)
    }

    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "## Interrupts to a user thread (TCG, 1 vCPU: the waiting thread is on the vCPU that takes the interrupt)\n"
        );
        if self.latency.is_empty() {
            let _ = writeln!(out, "Not measured in this run.\n");
            return out;
        }
        let _ = writeln!(
            out,
            "| path | events | p50 µs | p99 µs | max µs | mean µs |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|");
        for l in &self.latency {
            let _ = writeln!(
                out,
                "| {} | {} | {:.1} | {:.1} | {:.1} | {:.1} |",
                l.method, l.events, l.p50_us, l.p99_us, l.max_us, l.mean_us
            );
        }
        for u in &self.unavailable {
            let _ = writeln!(out, "\n{}: unavailable ({})", u.method, u.reason);
        }
        if let (Some(ours), Some(edu)) = (
            self.find("xxcapture-raise-to-wake-read")
                .or_else(|| self.find("xxcapture-raise-to-wake")),
            self.find("edu-uio-raise-to-wake"),
        ) {
            let _ = writeln!(
                out,
                "\nRaise-to-wake, ours ÷ edu's: p50 {:.2}x, p99 {:.2}x (target: within 2x).",
                ours.p50_us / edu.p50_us,
                ours.p99_us / edu.p99_us
            );
        }
        // The shared rings (SPEC §15): the consumer spinning on the CQ, and
        // sleeping until the card's RING_WAKE interrupt.
        let edu = self.find("edu-uio-raise-to-wake");
        if let Some(ring) = self.find("ring-raise-to-user-spin") {
            let _ = writeln!(
                out,
                "
An event through the completion ring, consumer spinning: p50 {:.1} µs{} (target: at or below edu's).",
                ring.p50_us,
                edu.map_or(String::new(), |e| format!(
                    ", {:.2}x edu's {:.1} µs",
                    ring.p50_us / e.p50_us,
                    e.p50_us
                )),
            );
        }
        if let Some(enter) = self.find("ring-raise-to-user-enter") {
            let _ = writeln!(
                out,
                "\nAn event through the completion ring with nothing polling (RING_ENTER and the doorbell in; the consumer arms the ring and sleeps unless the card has posted by then): p50 {:.1} µs.",
                enter.p50_us
            );
        }
        if let Some(irq) = self.find("ring-raise-to-sleeper") {
            let _ = writeln!(
                out,
                "\nAn event through the completion ring to a thread asleep in poll() on the armed ring (EXEC raises it: system call, doorbell, card, the card's RING_WAKE interrupt, wake-up): p50 {:.1} µs (target: at most 150 µs){}.",
                irq.p50_us,
                self.find("xxcapture-raise-to-wake")
                    .map_or(String::new(), |q| format!(
                        "; the event queue's same path: {:.1} µs",
                        q.p50_us
                    )),
            );
        }
        if let Some(one) = self.find("ring-task-file-1-spin") {
            let _ = writeln!(
                out,
                "
A one-command task file by the rings (SQ poller and consumer spinning): p50 {:.1} µs round trip (target: at most 10 µs).",
                one.p50_us
            );
        }
        if let Some(rate) = self.sustained_events_per_s {
            let how = match (self.sustained_burst, self.sustained_unread_limit) {
                (0, _) | (_, 0) => String::new(),
                (burst, limit) => format!(
                    " (bursts of {burst} TEST raises, the next sent only while at most {limit} records raised are unread)"
                ),
            };
            let _ = writeln!(
                out,
                "\nSustained: {rate:.0} event records per second to one reader{how}, {} lost.",
                self.sustained_lost.unwrap_or(0)
            );
        }
        if !self.sync_async.is_empty() {
            let _ = writeln!(
                out,
                "\n### Synchronous vs asynchronous DMA (4 KiB from card RAM)\n"
            );
            let _ = writeln!(
                out,
                "| target /s | model | achieved /s | guest CPU µs per request | completion p50 µs | p99 µs |"
            );
            let _ = writeln!(out, "|---:|---|---:|---:|---:|---:|");
            for row in &self.sync_async {
                let _ = writeln!(
                    out,
                    "| {} | {} | {:.0} | {:.1} | {:.1} | {:.1} |",
                    row.target_per_s
                        .map_or("max".to_string(), |t| t.to_string()),
                    row.model,
                    row.achieved_per_s,
                    row.cpu_us_per_request,
                    row.p50_us,
                    row.p99_us
                );
            }
            let _ = writeln!(
                out,
                "\nCrossover (lowest rate the blocking model cannot sustain, below 95% of it, while the asynchronous one does): {}. Guest CPU per request counts /proc/stat busy time in 10 ms ticks: at low rates it is mostly noise.",
                self.crossover.as_deref().unwrap_or("none")
            );
        }
        out.push('\n');
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_guest_records() {
        let output = [
            r#"irq: method=xxcapture-raise-to-wake events=100 p50_us=80.0 p99_us=200.0 max_us=900.0 mean_us=95.0"#,
            r#"@xxcap-result {"kind":"irq-latency","method":"xxcapture-raise-to-wake","events":100,"p50_us":80.0,"p99_us":200.0,"max_us":900.0,"mean_us":95.0}"#,
            r#"@xxcap-result {"kind":"irq-sustained","raised":2048,"received":2048,"lost":0,"gaps":0,"events_per_s":50000.0}"#,
            r#"@xxcap-result {"kind":"irq-latency","method":"edu-uio-raise-to-wake","events":100,"p50_us":40.0,"p99_us":100.0,"max_us":300.0,"mean_us":45.0}"#,
            r#"@xxcap-result {"kind":"sync-async","model":"sync","target_per_s":100,"achieved_per_s":100.0,"cpu_us_per_request":200.0,"p50_us":150.0,"p99_us":300.0}"#,
            r#"@xxcap-result {"kind":"sync-async","model":"async","target_per_s":null,"achieved_per_s":9000.0,"cpu_us_per_request":100.0,"p50_us":700.0,"p99_us":3000.0}"#,
            r#"@xxcap-result {"kind":"sync-async-crossover","rate":"max"}"#,
        ]
        .map(String::from);
        let r = InterruptReport::new(&Record::all(&output));
        assert_eq!(r.latency.len(), 2);
        assert_eq!(r.sustained_events_per_s, Some(50000.0));
        assert_eq!(r.sync_async.len(), 2);
        assert_eq!(r.sync_async[1].target_per_s, None);
        assert_eq!(r.crossover.as_deref(), Some("max"));
        let md = r.markdown();
        assert!(md.contains("p50 2.00x, p99 2.00x"), "{md}");
        assert!(md.contains("| max | async | 9000 |"), "{md}");
        assert!(
            md.contains("Sustained: 50000 event records per second to one reader, 0 lost."),
            "{md}"
        );
    }

    #[test]
    fn the_sustained_rate_says_how_it_was_paced() {
        let output = [
            r#"@xxcap-result {"kind":"irq-latency","method":"xxcapture-raise-to-wake","events":100,"p50_us":80.0,"p99_us":200.0,"max_us":900.0,"mean_us":95.0}"#,
            r#"@xxcap-result {"kind":"irq-sustained","raised":4096,"received":4096,"lost":0,"gaps":0,"events_per_s":700000.0,"burst":1024,"unread_limit":2048}"#,
        ]
        .map(String::from);
        let md = InterruptReport::new(&Record::all(&output)).markdown();
        assert!(
            md.contains("Sustained: 700000 event records per second to one reader (bursts of 1024 TEST raises, the next sent only while at most 2048 records raised are unread), 0 lost."),
            "{md}"
        );
    }
}
