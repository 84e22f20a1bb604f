//! What the vring worker thread does when a queue is kicked: drain the
//! command queue through [`process_chain`] in one batch, and hold the
//! capture buffers of the stream queue ([`process_stream_chain`]). Guest
//! mistakes are answered on the queue; a broken ring ends the kick.

use std::collections::VecDeque;

use log::{debug, error, trace, warn};
use vhost_user_backend::{VringRwLock, VringT};
use virtio_queue::DescriptorChain;
use virtio_queue::QueueOwnedT;
use vm_memory::{GuestAddressSpace, GuestMemoryLoadGuard, GuestMemoryMmap};
use xxcapture_abi::{req_type, VqRequest};

use crate::device::{Batch, Counters, XxcapDevice};
use crate::faults::{FaultKind, Unit};
use crate::queue::DeviceQueue;
use crate::request::{
    abort_tags, cancel_chain, peek_header, process_chain, Completion, Disposition,
};
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

/// Guest memory as the worker holds it for one drain.
type MemGuard = GuestMemoryLoadGuard<GuestMemoryMmap>;
/// A command-queue chain taken off the ring.
type Chain = DescriptorChain<MemGuard>;

/// Takes the available chains of the command queue into `pending`: all
/// of them, or with `one` just the next.
fn take_available(
    vring: &VringRwLock,
    mem: &MemGuard,
    pending: &mut VecDeque<Chain>,
    one: bool,
) -> Result<(), ()> {
    loop {
        // Hold the vring lock only to pop: the frontend thread needs it too.
        let chain = match vring.get_mut().get_queue_mut().iter(mem.clone()) {
            Ok(mut chains) => chains.next(),
            Err(e) => {
                // An avail index more than a queue ahead, or a queue
                // not set up: the driver broke the ring. Its requests
                // stay unanswered until it resets the device.
                error!("command queue unusable: {e}");
                return Err(());
            }
        };
        match chain {
            Some(chain) => pending.push_back(chain),
            None => return Ok(()),
        }
        if one {
            return Ok(());
        }
    }
}

/// The request the card answers next: the first ABORT waiting (an ABORT
/// overtakes the task files ahead of it), else the oldest request.
fn next_request(kinds: impl Iterator<Item = Option<u32>>) -> usize {
    let mut first_abort = None;
    for (index, kind) in kinds.enumerate() {
        if kind == Some(req_type::ABORT) {
            first_abort = Some(index);
            break;
        }
    }
    first_abort.unwrap_or(0)
}

/// The pending chains an ABORT naming `tags` cancels: task files with one
/// of the tags (by position in `headers`).
fn cancelled_by(tags: &[u64], headers: &[Option<VqRequest>]) -> Vec<usize> {
    headers
        .iter()
        .enumerate()
        .filter(|(_, h)| {
            h.is_some_and(|h| {
                h.req_type.get() == req_type::EXEC_TASK_FILE && tags.contains(&h.tag.get())
            })
        })
        .map(|(index, _)| index)
        .collect()
}

/// Answers the command queue: before it runs a task file it takes every
/// available request, so that an ABORT cancels the task files queued ahead
/// of it (see [`next_request`]). Other requests are taken one at a time. A
/// request taken is always answered: when the device quiesces, the task
/// files taken but not run go back CANCELLED.
fn drain_command_queue(
    device: &XxcapDevice,
    vring: &VringRwLock,
    atomic: &GuestMemory,
    batch: &mut Batch<'_>,
) -> Drained {
    let mem = atomic.memory();
    let mut pending: VecDeque<Chain> = VecDeque::new();
    loop {
        if device.is_quiescing() {
            debug!("quiescing: no more requests taken");
            while let Some(chain) = pending.pop_front() {
                let completion = cancel_chain(batch, &chain);
                if finish(device, vring, &mem, &chain, completion).is_err() {
                    return Drained::RingBroken;
                }
            }
            return Drained::Empty;
        }
        if pending.is_empty() && take_available(vring, &mem, &mut pending, true).is_err() {
            return Drained::RingBroken;
        }
        let Some(front) = pending.front() else {
            return Drained::Empty;
        };
        let front_is_task_file =
            peek_header(front).is_some_and(|h| h.req_type.get() == req_type::EXEC_TASK_FILE);
        if front_is_task_file && take_available(vring, &mem, &mut pending, false).is_err() {
            return Drained::RingBroken;
        }
        let headers: Vec<Option<VqRequest>> = pending.iter().map(peek_header).collect();
        let index = next_request(headers.iter().map(|h| h.map(|h| h.req_type.get())));
        let Some(chain) = pending.remove(index) else {
            return Drained::Empty;
        };
        // On virtual time the request's own time passes before it runs.
        device.clock().request();
        let faults = device.faults();
        if faults.is_live()
            && faults
                .tick(Unit::Request, device.device_now())
                .has(FaultKind::Stuck)
        {
            // An injected stuck card: taken, never executed nor completed
            // (until the device is reset and the driver reclaims it).
            warn!(
                "request {} will never complete (injected stuck)",
                chain.head_index()
            );
            continue;
        }
        if let Some(tags) = abort_tags(&chain) {
            let mut headers = headers;
            headers.remove(index);
            // Back to front, so that the positions stay valid.
            for at in cancelled_by(&tags, &headers).into_iter().rev() {
                let Some(victim) = pending.remove(at) else {
                    continue;
                };
                let completion = cancel_chain(batch, &victim);
                if finish(device, vring, &mem, &victim, completion).is_err() {
                    return Drained::RingBroken;
                }
            }
        }
        let completion = process_chain(batch, &chain);
        if finish(device, vring, &mem, &chain, completion).is_err() {
            return Drained::RingBroken;
        }
    }
}

/// Counts and logs one answered request, delivers the records it raised,
/// then marks it used and signals the guest.
fn finish(
    device: &XxcapDevice,
    vring: &VringRwLock,
    mem: &MemGuard,
    chain: &Chain,
    completion: Completion,
) -> Result<(), ()> {
    let counters = device.counters();
    let head = chain.head_index();
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
        Disposition::Aborted(buffers) => {
            debug!("request {head}: ABORT done, {buffers} stream buffers cancelled")
        }
        Disposition::Cancelled => debug!("request {head}: task file cancelled"),
        Disposition::Buffer {
            register,
            id,
            result,
        } => debug!("request {head}: buffer {id} (register: {register}): {result:?}"),
        Disposition::Ring { kick, result } => match result {
            Ok(()) => trace!("request {head}: ring (kick: {kick}) done"),
            Err(e) => {
                if e.status() == xxcapture_abi::vq_status::UNSUPPORTED {
                    Counters::bump(&counters.unsupported);
                }
                debug!("request {head}: ring (kick: {kick}): {e}");
            }
        },
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
    device.deliver_events(Some(mem));
    if let Err(e) = vring.add_used(head, completion.used_len) {
        error!("command queue: add_used({head}) failed: {e}");
        return Err(());
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
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_abort_is_answered_before_the_requests_ahead_of_it() {
        let ex = Some(req_type::EXEC_TASK_FILE);
        let ab = Some(req_type::ABORT);
        assert_eq!(next_request([ex, ex, ab, ex, ab].into_iter()), 2);
        assert_eq!(next_request([ex, None, ex].into_iter()), 0);
        assert_eq!(next_request([ab].into_iter()), 0);
        assert_eq!(next_request(std::iter::empty()), 0);
    }

    #[test]
    fn an_abort_cancels_only_task_files_with_its_tags() {
        let req = |kind: u32, tag: u64| {
            Some(VqRequest {
                req_type: kind.into(),
                tag: tag.into(),
                ..VqRequest::default()
            })
        };
        let headers = [
            req(req_type::EXEC_TASK_FILE, 1),
            req(req_type::FLUSH_BUFFERS, 2),
            None,
            req(req_type::EXEC_TASK_FILE, 2),
            req(req_type::EXEC_TASK_FILE, 3),
            req(req_type::ABORT, 2),
        ];
        assert_eq!(cancelled_by(&[2, 3], &headers), vec![3, 4]);
        assert!(cancelled_by(&[7], &headers).is_empty());
    }

    /// Only an ABORT overtakes: REGISTER_BUFFER and UNREGISTER_BUFFER keep
    /// their place among the task files (a task file queued after a
    /// REGISTER may name the buffer; once an UNREGISTER is answered no
    /// earlier task file may still use its pages), and an ABORT never
    /// cancels them, whatever their tags.
    #[test]
    fn registered_buffer_requests_keep_their_order_and_are_not_cancelled() {
        let ex = Some(req_type::EXEC_TASK_FILE);
        let reg = Some(req_type::REGISTER_BUFFER);
        let unreg = Some(req_type::UNREGISTER_BUFFER);
        assert_eq!(next_request([reg, ex, unreg].into_iter()), 0);
        assert_eq!(next_request([unreg, ex].into_iter()), 0);
        assert_eq!(next_request([ex, reg, ex].into_iter()), 0);
        let req = |kind: u32, tag: u64| {
            Some(VqRequest {
                req_type: kind.into(),
                tag: tag.into(),
                ..VqRequest::default()
            })
        };
        let headers = [
            req(req_type::REGISTER_BUFFER, 4),
            req(req_type::EXEC_TASK_FILE, 4),
            req(req_type::UNREGISTER_BUFFER, 4),
        ];
        assert_eq!(cancelled_by(&[4], &headers), vec![1]);
    }
}
