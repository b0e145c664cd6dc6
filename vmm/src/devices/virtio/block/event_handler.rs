//! Event loop glue: a queue notification runs the request queue.

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use super::Block;
use crate::devices::virtio::VirtioDevice;

impl MutEventSubscriber for Block {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if events.event_set().contains(EventSet::IN) {
            // Reading resets the counter; errors only mean "nothing pending".
            let _ = self.queue_events()[0].read();
            self.process_queue();
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(error) = ops.add(Events::new(&self.queue_events()[0], EventSet::IN)) {
            tracing::error!("virtio-blk: cannot watch the queue event: {error}");
        }
    }
}
