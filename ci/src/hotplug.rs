//! Removing the card from a running VM and adding it back, over QMP, with
//! the same `xxcapd` behind it.
//!
//! The VM runs QEMU's default machine, `pc` (i440fx): the card sits on bus 0
//! of the PIIX host bridge, where QEMU's ACPI PCI hotplug (PIIX4 PM's
//! `acpi-root-pci-hotplug`, on by default) handles `device_del`. QEMU only asks the guest: it raises the ACPI hotplug
//! event, the guest's `acpiphp` (Debian kernels build it in) unbinds the
//! driver (its `remove()`) and ejects the slot through `_EJ0`, and only
//! then does QEMU unrealize the device and send `DEVICE_DELETED`. A guest
//! that does not acknowledge never releases the card, so the wait for
//! that event is bounded.
//!
//! Unplugging ends the vhost-user session: the chardev is removed too,
//! which closes the socket. `xxcapd` (run without `--exit-on-disconnect`)
//! resets the card and waits for the next frontend on the same socket.
//! Plugging adds the chardev again (same id, same socket path, a client as
//! on the command line) and the device with the card's properties; the
//! guest's ACPI hotplug handler enumerates the new function and the loaded
//! driver probes it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::qmp::{Qmp, QmpError};
use crate::supervise::{CardSpec, SuperviseError};

const QMP_TIMEOUT: Duration = Duration::from_secs(10);

/// The card's slot in a running VM: what is needed to unplug it and plug
/// it in again.
pub struct CardSlot {
    qmp: Qmp,
    spec: CardSpec,
    types: HashMap<String, String>,
    socket: PathBuf,
    plugged: bool,
}

impl CardSlot {
    /// The card `spec`, served by the `xxcapd` listening on `socket`, plugged
    /// in (as QEMU was started).
    pub fn new(mut qmp: Qmp, spec: CardSpec, socket: PathBuf) -> Result<CardSlot, SuperviseError> {
        let types = spec.property_types(&mut qmp)?;
        // Checked now, so that a bad property fails the launch, not a plug.
        spec.device_add(&spec.chardev_id, &types)?;
        Ok(CardSlot {
            qmp,
            spec,
            types,
            socket,
            plugged: true,
        })
    }

    pub fn plugged(&self) -> bool {
        self.plugged
    }

    /// `device_del`, then waits (at most `timeout`) for the guest to
    /// release the card (`DEVICE_DELETED`), then removes the chardev,
    /// which disconnects `xxcapd`. Returns how long the guest took.
    pub fn unplug(&mut self, timeout: Duration) -> Result<Duration, SuperviseError> {
        let device = self.spec.device_id.clone();
        let started = Instant::now();
        self.qmp
            .execute("device_del", Some(json!({ "id": device })), QMP_TIMEOUT)?;
        self.qmp.wait_event(
            &format!("DEVICE_DELETED {device}"),
            started + timeout,
            |e| e.name == "DEVICE_DELETED" && e.data.get("device") == Some(&json!(device)),
        )?;
        let released = started.elapsed();
        self.plugged = false;
        let chardev = self.spec.chardev_id.clone();
        // The device lets go of its chardev as it is freed, which may come a
        // moment after the event: "in use" until then.
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            match self.qmp.execute(
                "chardev-remove",
                Some(json!({ "id": chardev })),
                QMP_TIMEOUT,
            ) {
                Ok(_) => break,
                Err(QmpError::Command { .. }) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(released)
    }

    /// Adds the chardev (a client of the same socket) and the card again.
    pub fn plug(&mut self) -> Result<(), SuperviseError> {
        let chardev = self.spec.chardev_id.clone();
        // xxcapd accepts the next frontend once it has reset the card after
        // the last one: a connect before that waits in its backlog, so
        // "refused" can only mean it is not listening at all.
        self.qmp.execute(
            "chardev-add",
            Some(self.spec.chardev_add(&chardev, &self.socket)),
            QMP_TIMEOUT,
        )?;
        let added = self
            .spec
            .device_add(&chardev, &self.types)
            .and_then(|args| Ok(self.qmp.execute("device_add", Some(args), QMP_TIMEOUT)?));
        if let Err(e) = added {
            let _ = self.qmp.execute(
                "chardev-remove",
                Some(json!({ "id": chardev })),
                QMP_TIMEOUT,
            );
            return Err(e);
        }
        self.plugged = true;
        Ok(())
    }
}
