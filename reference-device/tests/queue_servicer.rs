//! The external-queue hook (`DeviceBackend::queue_servicer`): the transport hands validated
//! rings, notifications and stops to the servicer and never processes the chains itself.

mod common;

use common::*;
use std::sync::{Arc, Mutex};
use virtio_reference_device::regs::*;
use virtio_reference_device::*;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Event {
    Negotiated(u64),
    Start(u16, QueueRing),
    Notify(u16),
    Stop(u16),
    Reset,
}

/// Records what the transport hands over; `used` is what `take_used` reports next.
struct Recorder {
    log: Arc<Mutex<Vec<Event>>>,
    used: Arc<Mutex<Vec<u16>>>,
}

impl DeviceBackend for Recorder {
    fn device_id(&self) -> u32 {
        4
    }
    fn features(&self) -> u64 {
        0
    }
    fn num_queues(&self) -> u16 {
        1
    }
    fn config(&self) -> &[u8] {
        &[]
    }
    fn process(&mut self, _q: u16, _c: &[Descriptor], _r: &mut GuestRam) -> Completion {
        panic!("the transport must not process chains of an externally serviced queue")
    }
    fn name(&self) -> &'static str {
        "recorder"
    }
    fn reset(&mut self) {
        self.log.lock().unwrap().push(Event::Reset);
    }
    fn negotiated(&mut self, f: u64) {
        self.log.lock().unwrap().push(Event::Negotiated(f));
    }
    fn queue_servicer(&mut self) -> Option<&mut dyn QueueServicer> {
        Some(self)
    }
}

impl QueueServicer for Recorder {
    fn start(&mut self, q: u16, ring: QueueRing) {
        self.log.lock().unwrap().push(Event::Start(q, ring));
    }
    fn notify(&mut self, q: u16) {
        self.log.lock().unwrap().push(Event::Notify(q));
    }
    fn stop(&mut self, q: u16) {
        self.log.lock().unwrap().push(Event::Stop(q));
    }
    fn take_used(&mut self) -> Vec<u16> {
        std::mem::take(&mut *self.used.lock().unwrap())
    }
}

type Log = Arc<Mutex<Vec<Event>>>;

fn recorder_rig() -> (Rig, Log, Arc<Mutex<Vec<u16>>>) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let used = Arc::new(Mutex::new(Vec::new()));
    let backend = Recorder {
        log: log.clone(),
        used: used.clone(),
    };
    let mut cfg = DeviceConfig::new(TransportVersion::Modern);
    cfg.queue_num_max = vec![8];
    (rig(cfg, Box::new(backend)), log, used)
}

#[test]
fn rings_notifications_and_stops_go_to_the_servicer() {
    let (mut r, log, used) = recorder_rig();
    r.init(0);
    let ring = QueueRing {
        size: r.q.size,
        desc: r.q.desc,
        driver: r.q.avail,
        device: r.q.used,
    };
    assert_eq!(
        log.lock().unwrap().clone(),
        vec![
            Event::Reset,
            Event::Reset,
            Event::Negotiated(bit(VIRTIO_F_VERSION_1)),
            Event::Start(0, ring)
        ]
    );
    log.lock().unwrap().clear();
    // A chain posted and kicked is the servicer's: the transport only passes the kick on.
    r.post(0, &[(16, true)]);
    assert_eq!(log.lock().unwrap().clone(), vec![Event::Notify(0)]);
    assert!(r.used().is_empty(), "the transport used nothing itself");
    // The servicer's call becomes InterruptStatus bit 0.
    assert_eq!(r.r(INTERRUPT_STATUS) & INT_USED_BUFFER, 0);
    used.lock().unwrap().push(0);
    r.dev.poll_queue_servicer();
    assert_ne!(r.r(INTERRUPT_STATUS) & INT_USED_BUFFER, 0);
    assert_eq!(
        r.dev.take_interrupts(),
        vec![Interrupt::UsedBuffer { queue: 0 }]
    );
    log.lock().unwrap().clear();
    r.w(QUEUE_READY, 0);
    assert_eq!(log.lock().unwrap().clone(), vec![Event::Stop(0)]);
}

#[test]
fn an_invalid_ring_is_not_handed_over_and_needs_reset() {
    let (mut r, log, _) = recorder_rig();
    let st = r.negotiate(bit(VIRTIO_F_VERSION_1));
    assert_ne!(st as u8 & FEATURES_OK, 0);
    r.setup_queue();
    // QueueNum 3 is not a power of 2 (§2.7): the transport refuses it as it would its own.
    r.w(QUEUE_READY, 0);
    r.w(QUEUE_NUM, 3);
    r.w(QUEUE_READY, 1);
    r.w(
        STATUS,
        (ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK) as u32,
    );
    assert!(!log
        .lock()
        .unwrap()
        .iter()
        .any(|e| matches!(e, Event::Start(..))));
    assert_ne!(r.r(STATUS) as u8 & DEVICE_NEEDS_RESET, 0);
}

#[test]
fn kicks_before_driver_ok_are_not_passed_on() {
    let (mut r, log, _) = recorder_rig();
    r.negotiate(bit(VIRTIO_F_VERSION_1));
    r.setup_queue();
    r.w(QUEUE_NOTIFY, 0);
    assert!(!log
        .lock()
        .unwrap()
        .iter()
        .any(|e| matches!(e, Event::Notify(_) | Event::Start(..))));
}
