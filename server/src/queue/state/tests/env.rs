//! The test environment of the state machine's tests: a [`State`] on a fake clock, fake
//! workers, and the record of what each event persisted and sent (see `mod.rs`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use herd_proto::access::{TokenKind, TokenRequest};
use herd_proto::session::{Hello, ToWorker};
use herd_proto::{
    BatchName, Reason, TaskId, TaskReport, TaskRequest, TaskSpec, TaskState, Timestamp, WorkerId,
};

use super::super::{Address, Caller, Change, Clock, State, digest};
use crate::queue::change::Effect;
use crate::store::{Snapshot, StoreError};
use crate::stored_spec;

pub(super) const HEARTBEAT: Duration = Duration::from_secs(5);
pub(super) const TIMEOUT: Duration = Duration::from_secs(20);
pub(super) const WORKER_TIMEOUT: Duration = Duration::from_secs(20);

/// A clock that moves only when told.
#[derive(Clone)]
pub(super) struct FakeClock(pub(super) Arc<Mutex<(Timestamp, Instant)>>);

impl FakeClock {
    pub(super) fn new() -> Self {
        FakeClock(Arc::new(Mutex::new((
            Timestamp(1_700_000_000_000),
            Instant::now(),
        ))))
    }

    pub(super) fn advance(&self, by: Duration) {
        let mut moment = self.0.lock().unwrap();
        moment.0 = Timestamp(moment.0.0 + by.as_millis() as i64);
        moment.1 += by;
    }
}

impl Clock for FakeClock {
    fn now(&self) -> Timestamp {
        self.0.lock().unwrap().0
    }

    fn instant(&self) -> Instant {
        self.0.lock().unwrap().1
    }
}

/// What a fake worker says in its hello.
#[derive(Clone)]
pub(super) struct Setup {
    pub(super) batch: &'static str,
    pub(super) concurrency: u32,
    pub(super) prefetch: u32,
    pub(super) docker: bool,
    pub(super) bare: bool,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            batch: "b",
            concurrency: 1,
            prefetch: 0,
            docker: false,
            bare: true,
        }
    }
}

/// A state on a fake clock, and the record of what it persisted and sent.
pub(super) struct TestEnv {
    pub(super) state: State,
    pub(super) clock: FakeClock,
    pub(super) next_serial: u64,
    /// Current connection of each fake worker.
    pub(super) connections: Vec<Address>,
    /// Messages sent and not yet taken, in order.
    pub(super) sent: Vec<(Address, ToWorker)>,
    /// Connections the state let go of.
    pub(super) hangups: Vec<Address>,
    /// Quarantines logged: the worker, and the seconds it starts for (`None`: it ended).
    pub(super) quarantines: Vec<(WorkerId, Option<u64>)>,
    /// Keys of the rows the last step touched.
    pub(super) last_rows: Change,
    /// The bootstrap admin.
    pub(super) admin: Caller,
    /// The fake workers' token.
    pub(super) worker_token: Caller,
    /// Each fake worker's resume key, from its welcome.
    pub(super) keys: HashMap<WorkerId, String>,
}

impl TestEnv {
    pub(super) fn new() -> Self {
        let clock = FakeClock::new();
        let mut state = State::new(Box::new(clock.clone()));
        let mut change = Change::default();
        assert!(state.bootstrap(&digest("herd_admin"), &mut change));
        let admin = state
            .authenticate(&digest("herd_admin"))
            .expect("the admin");
        let request = TokenRequest {
            user: None,
            kind: TokenKind::Worker,
            batch: None,
            label: String::new(),
        };
        state
            .create_token(&admin, request, &digest("herd_worker"), &mut change)
            .expect("a worker token");
        let worker_token = state
            .authenticate(&digest("herd_worker"))
            .expect("the worker token");
        TestEnv {
            state,
            clock,
            next_serial: 1,
            connections: Vec::new(),
            sent: Vec::new(),
            hangups: Vec::new(),
            quarantines: Vec::new(),
            last_rows: Change::default(),
            admin,
            worker_token,
            keys: HashMap::new(),
        }
    }

    /// Runs one event as the queue would (one change per event) and records its output.
    pub(super) fn step<T>(&mut self, event: impl FnOnce(&mut State, &mut Change) -> T) -> T {
        let mut change = Change::default();
        let result = event(&mut self.state, &mut change);
        for effect in change.effects.drain(..) {
            match effect {
                Effect::Send(address, message) => self.sent.push((address, message)),
                Effect::Hangup(address) => self.hangups.push(address),
                Effect::Quarantine(worker, started) => self
                    .quarantines
                    .push((worker, started.map(|(seconds, _)| seconds))),
                Effect::Notify(_) | Effect::RemoveLogs(_) => {}
            }
        }
        self.last_rows = change;
        result
    }

    pub(super) fn submit(&mut self, requests: Vec<TaskRequest>) -> Vec<TaskId> {
        let specs = requests
            .into_iter()
            .map(|request| {
                let spec = TaskSpec::new(request).expect("a valid test task");
                let json = stored_spec::encode(&spec);
                (spec, json)
            })
            .collect();
        let admin = self.admin.clone();
        self.step(|state, change| state.submit(&admin, specs, change))
            .expect("queued")
    }

    pub(super) fn hello(&self, worker_id: Option<WorkerId>, setup: &Setup) -> Hello {
        Hello {
            worker_id,
            resume_key: worker_id.and_then(|id| self.keys.get(&id).cloned()),
            name: "fake".to_owned(),
            batch: BatchName::new(setup.batch).unwrap(),
            concurrency: setup.concurrency,
            prefetch: setup.prefetch,
            docker: setup.docker,
            bare: setup.bare,
            allow_privileged: false,
            cores: 4,
            memory_bytes: 1 << 30,
            version: "test".to_owned(),
            tasks: Vec::new(),
        }
    }

    /// Connects a new fake worker; returns its id.
    pub(super) fn connect(&mut self, setup: Setup) -> WorkerId {
        let hello = self.hello(None, &setup);
        self.connect_with(hello)
    }

    /// Connects with `hello` on a new connection; returns the worker's id.
    pub(super) fn connect_with(&mut self, hello: Hello) -> WorkerId {
        let serial = self.next_serial;
        self.next_serial += 1;
        let token = self.worker_token.clone();
        let key = format!("herd_key{serial}");
        let worker = self
            .step(|state, change| {
                state.connect(&token, hello, &key, serial, HEARTBEAT, TIMEOUT, change)
            })
            .expect("connected");
        self.connections.retain(|address| address.worker != worker);
        self.connections.push(Address { worker, serial });
        for (address, message) in &self.sent {
            if let ToWorker::Welcome { resume_key, .. } = message
                && address.serial == serial
            {
                self.keys.insert(worker, resume_key.clone());
            }
        }
        worker
    }

    pub(super) fn address(&self, worker: WorkerId) -> Address {
        *self
            .connections
            .iter()
            .find(|address| address.worker == worker)
            .expect("a connected fake worker")
    }

    /// Reports on the worker's current connection, as the queue does.
    pub(super) fn report(&mut self, worker: WorkerId, report: TaskReport) {
        let serial = self.address(worker).serial;
        self.step(|state, change| {
            if state.touch(worker, serial) {
                state.report(worker, report, change);
            }
        });
    }

    /// Reports `task`'s attempt in `state` at the fake clock's time.
    pub(super) fn report_state(
        &mut self,
        worker: WorkerId,
        task: TaskId,
        attempt: u32,
        state: TaskState,
    ) {
        let mut report = TaskReport::new(task, attempt, state);
        report.at = self.clock.now();
        if state == TaskState::Failed {
            report.exit_code = Some(1);
            report.reason = Some(Reason::ExitCode);
        }
        self.report(worker, report);
    }

    /// Messages sent to `worker` (any of its connections) since last taken.
    pub(super) fn take(&mut self, worker: WorkerId) -> Vec<ToWorker> {
        let (mine, others) = std::mem::take(&mut self.sent)
            .into_iter()
            .partition(|(address, _)| address.worker == worker);
        self.sent = others;
        mine.into_iter().map(|(_, message)| message).collect()
    }

    /// The assignments among `worker`'s new messages, as (task, attempt); fails on others.
    pub(super) fn take_assigned(&mut self, worker: WorkerId) -> Vec<(TaskId, u32)> {
        self.take(worker)
            .into_iter()
            .map(|message| match message {
                ToWorker::Assign {
                    task_id, attempt, ..
                } => (task_id, attempt),
                other => panic!("expected only assignments, got {other:?}"),
            })
            .collect()
    }

    pub(super) fn task_state(&self, task: TaskId) -> TaskState {
        self.state.tasks[&task].state
    }

    pub(super) fn pending_count(&self, batch: &str) -> u64 {
        self.state
            .batch_view(&BatchName::new(batch).unwrap())
            .unwrap()
            .pending
    }

    /// Every row the state would hold in the database, as a snapshot to restore from.
    pub(super) fn snapshot(&self) -> Snapshot {
        let state = &self.state;
        let mut snapshot = Snapshot {
            counters: state.counter_rows(),
            ..Snapshot::default()
        };
        let mut ids: Vec<TaskId> = state.tasks.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            snapshot.tasks.push(state.task_row(id).unwrap());
            for attempt in &state.tasks[&id].attempts {
                snapshot
                    .attempts
                    .push(state.attempt_row(id, attempt.number).unwrap());
            }
        }
        for name in state.batches.keys() {
            snapshot.batches.push(state.batch_row(name).unwrap());
        }
        for id in state.workers.keys() {
            snapshot.workers.push(state.worker_row(*id).unwrap());
        }
        for id in state.users.keys() {
            snapshot.users.push(state.user_row(*id).unwrap());
        }
        for id in state.tokens.keys() {
            snapshot.tokens.push(state.token_row(*id).unwrap());
        }
        snapshot
    }

    /// A fresh state restored from `snapshot`, with the repairs it journaled.
    pub(super) fn restored(snapshot: Snapshot) -> Result<(TestEnv, Change), StoreError> {
        let mut env = TestEnv::new();
        let mut repairs = Change::default();
        env.state.restore(snapshot, &mut repairs)?;
        Ok((env, repairs))
    }
}

pub(super) fn task(batch: &str) -> TaskRequest {
    TaskRequest {
        batch: batch.to_owned(),
        command: vec!["true".to_owned()],
        ..TaskRequest::default()
    }
}

pub(super) fn tasks(batch: &str, count: usize) -> Vec<TaskRequest> {
    (0..count).map(|_| task(batch)).collect()
}

pub(super) fn docker_task(batch: &str) -> TaskRequest {
    TaskRequest {
        docker_image: Some("busybox".to_owned()),
        ..task(batch)
    }
}

/// Runs `task` on `worker` through to success in `slot` of (fake) time.
pub(super) fn run_to_success(env: &mut TestEnv, worker: WorkerId, task: TaskId, slot: Duration) {
    env.report_state(worker, task, 1, TaskState::Running);
    env.clock.advance(slot);
    env.report_state(worker, task, 1, TaskState::Succeeded);
}
