//! What the vring worker thread does when a queue is kicked: drain the
//! command queue through [`process_chain`] in one batch, and hold the
//! capture buffers of the stream queue ([`process_stream_chain`]). Guest
//! mistakes are answered on the queue; a broken ring ends the kick.

use log::{debug, error, trace, warn};
use vhost_user_backend::{VringRwLock, VringT};
use virtio_queue::QueueOwnedT;
use vm_memory::GuestAddressSpace;

use crate::device::{Batch, Counters, XxcapDevice};
use crate::faults::{FaultKind, Unit};
use crate::queue::DeviceQueue;
use crate::request::{process_chain, Disposition};
use crate::stream::{process_stream_chain, StreamChain};
use crate::vhu_adapters::VringQueue;
use crate::vhu_xxcap::GuestMemory;

/// How draining the command queue ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Drained {
    /// No chain is available.
    Empty,
    /// The driver's ring cannot be used (bad avail index or descriptor).
    RingBroken,
}

/// Processes the command queue until it is empty, re-checking after
/// re-enabling notifications when EVENT_IDX is negotiated.
pub(crate) fn process_command_queue(device: &XxcapDevice, vring: &VringRwLock, event_idx: bool) {
    let Some(atomic) = device.memory().atomic() else {
        warn!("command queue kicked before guest memory was set");
        return;
    };
    let Some(mut batch) = device.begin_batch() else {
        return;
    };
    loop {
        if event_idx {
            if let Err(e) = vring.disable_notification() {
                warn!("command queue: cannot disable notifications: {e}");
            }
        }
        let drained = drain_command_queue(device, vring, &atomic, &mut batch);
        // A broken avail ring would make enable_notification report
        // "more chains" forever: give up on this kick instead of
        // spinning with the card locked (found by fuzzing).
        if !event_idx || drained == Drained::RingBroken {
            break;
        }
        match vring.enable_notification() {
            // More chains arrived while notifications were off.
            Ok(true) => continue,
            Ok(false) => break,
            Err(e) => {
                warn!("command queue: cannot enable notifications: {e}");
                break;
            }
        }
    }
}

fn drain_command_queue(
    device: &XxcapDevice,
    vring: &VringRwLock,
    atomic: &GuestMemory,
    batch: &mut Batch<'_>,
) -> Drained {
    let mem = atomic.memory();
    let counters = device.counters();
    let faults = device.faults();
    loop {
        if device.is_quiescing() {
            debug!("quiescing: no more requests taken");
            return Drained::Empty;
        }
        // Hold the vring lock only to pop: the frontend thread needs it too.
        let chain = match vring.get_mut().get_queue_mut().iter(mem.clone()) {
            Ok(mut chains) => chains.next(),
            Err(e) => {
                // An avail index more than a queue ahead, or a queue
                // not set up: the driver broke the ring. Its requests
                // stay unanswered until it resets the device.
                error!("command queue unusable: {e}");
                return Drained::RingBroken;
            }
        };
        let Some(chain) = chain else {
            return Drained::Empty;
        };
        let head = chain.head_index();
        // On virtual time the request's own time passes before it runs.
        device.clock().request();
        if faults.is_live()
            && faults
                .tick(Unit::Request, device.device_now())
                .has(FaultKind::Stuck)
        {
            // An injected stuck card: taken, never executed nor completed
            // (until the device is reset and the driver reclaims it).
            warn!("request {head} will never complete (injected stuck)");
            continue;
        }
        let completion = process_chain(batch, &chain);
        Counters::bump(&counters.requests);
        match completion.disposition {
            Disposition::Executed(outcome) => {
                trace!("request {head}: {outcome:?}, {} bytes", completion.used_len)
            }
            Disposition::Attached(Ok(())) => {
                Counters::bump(&counters.attaches);
                debug!("request {head}: ATTACH done");
            }
            Disposition::Attached(Err(e)) => {
                Counters::bump(&counters.attach_failures);
                warn!("request {head}: ATTACH failed: {e}");
            }
            Disposition::Flushed(Ok(())) => debug!("request {head}: FLUSH_BUFFERS done"),
            Disposition::Flushed(Err(e)) => warn!("request {head}: FLUSH_BUFFERS: {e}"),
            Disposition::Buffer {
                register,
                id,
                result,
            } => debug!("request {head}: buffer {id} (register: {register}): {result:?}"),
            Disposition::Rejected(e) => {
                if e.status() == xxcapture_abi::vq_status::UNSUPPORTED {
                    Counters::bump(&counters.unsupported);
                } else {
                    Counters::bump(&counters.bad_requests);
                }
                debug!("request {head} rejected: {e}");
            }
            Disposition::Dropped(e) => {
                Counters::bump(&counters.bad_requests);
                debug!("request {head} dropped: {e}");
            }
        }
        // Records the request raised go out before its completion, so
        // the driver has them when the request returns.
        device.deliver_events(Some(&mem));
        if let Err(e) = vring.add_used(head, completion.used_len) {
            error!("command queue: add_used({head}) failed: {e}");
            return Drained::RingBroken;
        }
        match vring.needs_notification() {
            Ok(false) => {}
            Ok(true) => {
                if let Err(e) = vring.signal_used_queue() {
                    error!("command queue: cannot signal the guest: {e}");
                }
            }
            Err(e) => error!("command queue: cannot read the used event: {e}"),
        }
    }
}

/// Holds the capture buffers the driver queued; answers malformed ones.
pub(crate) fn process_stream_queue(device: &XxcapDevice, vring: &VringRwLock, event_idx: bool) {
    let Some(mem) = device.memory().get() else {
        warn!("stream queue kicked before guest memory was set");
        return;
    };
    let vring = VringQueue(vring.clone());
    let mut answered = false;
    let mut broken = false;
    loop {
        if event_idx {
            if let Err(e) = vring.disable_notification() {
                warn!("stream queue: cannot disable notifications: {e}");
            }
        }
        loop {
            let chain = match vring.pop(&mem) {
                Ok(Some(chain)) => chain,
                Ok(None) => break,
                Err(e) => {
                    // A broken ring would report "more chains" forever:
                    // leave it until the driver resets the device.
                    error!("stream queue unusable: {e}");
                    broken = true;
                    break;
                }
            };
            let head = chain.head_index();
            match process_stream_chain(&chain, device.device_now()) {
                StreamChain::Hold(buffer) => {
                    trace!("stream buffer {head}: {} bytes held", buffer.capacity);
                    device.hold_stream_buffer(buffer);
                }
                StreamChain::Done(completion) => {
                    Counters::bump(&device.counters().bad_requests);
                    debug!("stream buffer {head} refused: {:?}", completion.disposition);
                    if let Err(e) = vring.add_used(head, completion.used_len) {
                        error!("stream queue: add_used({head}) failed: {e}");
                    }
                    answered = true;
                }
            }
        }
        if !event_idx || broken {
            break;
        }
        match vring.enable_notification() {
            Ok(true) => continue,
            Ok(false) => break,
            Err(e) => {
                warn!("stream queue: cannot enable notifications: {e}");
                break;
            }
        }
    }
    if answered {
        if let Err(e) = vring.notify() {
            error!("stream queue: cannot signal the guest: {e}");
        }
    }
}
