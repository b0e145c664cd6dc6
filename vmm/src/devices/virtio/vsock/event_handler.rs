//! Event loop glue: queue notifications and host socket readiness drive the device; the
//! muxer's wanted fd interests are mirrored into the event loop after every event.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, RawFd};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use super::Vsock;
use super::device::{EVENT_QUEUE, RX_QUEUE, TX_QUEUE};
use crate::devices::virtio::VirtioDevice;

/// Registered host fds and their interest, kept beside the device.
#[derive(Default)]
pub(super) struct Registered(HashMap<RawFd, EventSet>);

impl Vsock {
    fn sync_interests(&mut self, ops: &mut EventOps) {
        let wanted = self.muxer.interests();
        let registered = &mut self.registered.0;
        registered.retain(|fd, events| {
            if wanted.contains_key(fd) {
                return true;
            }
            let _ = ops.remove(Events::new_raw(*fd, *events));
            false
        });
        for (fd, events) in wanted {
            match registered.get(&fd) {
                Some(current) if *current == events => {}
                Some(_) => {
                    if ops.modify(Events::new_raw(fd, events)).is_ok() {
                        registered.insert(fd, events);
                    }
                }
                None => match ops.add(Events::new_raw(fd, events)) {
                    Ok(()) => {
                        registered.insert(fd, events);
                    }
                    Err(error) => tracing::warn!("vsock: cannot watch a host socket: {error}"),
                },
            }
        }
        // Only now may closed sockets release their fd numbers.
        drop(self.muxer.take_graveyard());
    }
}

impl MutEventSubscriber for Vsock {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        let queue = self.queue_events().iter().position(|e| e.as_raw_fd() == fd);
        match queue {
            Some(index) => {
                let _ = self.queue_events()[index].read();
                match index {
                    TX_QUEUE => self.process_tx(),
                    RX_QUEUE => self.process_rx(),
                    EVENT_QUEUE => {}
                    _ => {}
                }
            }
            None => {
                self.muxer.handle_fd(fd, events.event_set());
                self.process_rx();
            }
        }
        self.sync_interests(ops);
    }

    fn init(&mut self, ops: &mut EventOps) {
        for event in self.queue_events() {
            if let Err(error) = ops.add(Events::new(event, EventSet::IN)) {
                tracing::error!("vsock: cannot watch a queue event: {error}");
            }
        }
        self.sync_interests(ops);
    }
}
