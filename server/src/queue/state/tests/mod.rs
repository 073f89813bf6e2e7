//! Unit tests of the state machine, without a runtime or a database.
//!
//! [`TestEnv`] plays the part of the queue (after HyperQueue's tako `TestEnv`/`TestComm`):
//! it owns a [`State`] on a fake clock, connects fake workers by name, pushes events, and
//! records what the state would persist (the row keys of every change) and send (the messages
//! addressed to each connection, in order). Tests read those records; nothing sleeps.

use std::time::Duration;

use herd_proto::session::ToWorker;
use herd_proto::{BatchName, Reason, TaskId, TaskReport, TaskRequest, TaskState, WorkerId};

use super::Clock;

mod access;
mod env;
mod reliability;
mod submissions;

use env::*;

#[test]
fn submitted_tasks_are_pending_counted_and_persisted() {
    let mut env = TestEnv::new();
    let ids = env.submit(tasks("b", 3));
    assert_eq!(ids, vec![TaskId(1), TaskId(2), TaskId(3)]);
    assert_eq!(env.pending_count("b"), 3);
    let rows = &env.last_rows.dirty;
    assert!(ids.iter().all(|id| rows.tasks.contains(id)));
    assert_eq!(rows.batches, vec![BatchName::new("b").unwrap()]);
    assert!(rows.counters, "the next task id is persisted");
    assert!(env.sent.is_empty(), "no worker, nothing sent");
    assert_eq!(env.state.task_row(ids[0]).unwrap().state, "pending");
}

#[test]
fn a_connecting_worker_is_welcomed_on_its_connection_and_registered() {
    let mut env = TestEnv::new();
    let worker = env.connect(Setup::default());
    assert_eq!(worker, WorkerId(1));
    let address = env.address(worker);
    assert_eq!(
        env.sent,
        vec![(
            address,
            ToWorker::Welcome {
                worker_id: worker,
                heartbeat_interval: HEARTBEAT,
                resume_key: "herd_key1".to_owned(),
                worker_timeout: Some(TIMEOUT),
                instance_id: env.state.instance_id,
            }
        )]
    );
    assert!(env.last_rows.dirty.workers.contains(&worker));
    assert!(env.last_rows.dirty.counters);
    assert_eq!(env.state.worker_views(&env.admin)[0].status, "connected");
}

#[test]
fn a_worker_gets_as_many_tasks_as_it_has_free_slots() {
    let mut env = TestEnv::new();
    let worker = env.connect(Setup {
        concurrency: 2,
        prefetch: 1,
        ..Setup::default()
    });
    env.take(worker);
    let ids = env.submit(tasks("b", 5));
    assert_eq!(
        env.take_assigned(worker),
        vec![(ids[0], 1), (ids[1], 1), (ids[2], 1)],
        "concurrency plus prefetch, oldest first"
    );
    assert_eq!(env.task_state(ids[2]), TaskState::Assigned);
    assert_eq!(env.task_state(ids[3]), TaskState::Pending);
    assert!(env.last_rows.dirty.attempts.contains(&(ids[0], 1)));
}

#[test]
fn short_attempts_open_a_pipeline_and_long_ones_do_not() {
    for (slot, expected) in [
        // 10 ms a task on one slot: 100 ms of work is 10 tasks beyond the slot.
        (Duration::from_millis(10), 1 + 10),
        (Duration::from_millis(200), 1),
    ] {
        let mut env = TestEnv::new();
        let worker = env.connect(Setup::default());
        let ids = env.submit(tasks("b", 40));
        assert_eq!(env.take(worker).len(), 2, "welcome and one assignment");
        run_to_success(&mut env, worker, ids[0], slot);
        let messages = env.take(worker);
        assert_eq!(
            messages[0],
            ToWorker::Ack {
                task_id: ids[0],
                attempt: 1
            }
        );
        assert_eq!(messages.len() - 1, expected, "after an attempt of {slot:?}");
    }
}

#[test]
fn free_slots_of_every_worker_are_filled_before_any_pipeline() {
    let mut env = TestEnv::new();
    let first = env.connect(Setup::default());
    let warmup = env.submit(tasks("b", 1));
    // One short attempt: the batch's pipeline is open (32 tasks a slot).
    run_to_success(&mut env, first, warmup[0], Duration::from_millis(1));
    let second = env.connect(Setup::default());
    env.take(first);
    env.take(second);
    let ids = env.submit(tasks("b", 3));
    assert_eq!(env.take_assigned(second), vec![(ids[1], 1)]);
    assert_eq!(env.take_assigned(first), vec![(ids[0], 1), (ids[2], 1)]);
}

#[test]
fn reports_move_the_attempt_and_the_final_one_is_acknowledged_and_frees_the_slot() {
    let mut env = TestEnv::new();
    let worker = env.connect(Setup::default());
    let ids = env.submit(tasks("b", 3));
    env.take(worker);
    env.report_state(worker, ids[0], 1, TaskState::Downloading);
    env.report_state(worker, ids[0], 1, TaskState::Running);
    assert!(env.take(worker).is_empty(), "phases are not answered");
    assert_eq!(env.task_state(ids[0]), TaskState::Running);
    assert!(env.last_rows.dirty.attempts.contains(&(ids[0], 1)));
    // Uploading holds no slot: the next task goes out.
    env.report_state(worker, ids[0], 1, TaskState::Uploading);
    assert_eq!(env.take_assigned(worker), vec![(ids[1], 1)]);
    env.clock.advance(Duration::from_secs(1));
    env.report_state(worker, ids[0], 1, TaskState::Succeeded);
    assert_eq!(
        env.take(worker),
        vec![ToWorker::Ack {
            task_id: ids[0],
            attempt: 1
        }],
        "acknowledged; the slot is held by the second task"
    );
    let done = &env.state.tasks[&ids[0]];
    assert_eq!(done.state, TaskState::Succeeded);
    assert!(done.attempts[0].ended_at.is_some());
    assert!(!env.state.workers[&worker].tasks.contains(&ids[0]));
    // The second one's end frees the slot for the third.
    env.report_state(worker, ids[1], 1, TaskState::Running);
    env.clock.advance(Duration::from_secs(1));
    env.report_state(worker, ids[1], 1, TaskState::Failed);
    let messages = env.take(worker);
    assert_eq!(
        messages,
        vec![
            ToWorker::Ack {
                task_id: ids[1],
                attempt: 1
            },
            ToWorker::Assign {
                task_id: ids[2],
                attempt: 1,
                spec: env.state.tasks[&ids[2]].spec.clone()
            }
        ]
    );
}

#[test]
fn a_silent_worker_is_lost_and_its_task_is_queued_first_with_the_next_attempt() {
    let mut env = TestEnv::new();
    let lost = env.connect(Setup::default());
    let ids = env.submit(tasks("b", 2));
    env.take(lost);
    env.report_state(lost, ids[0], 1, TaskState::Running);
    // Heard from in time: not lost.
    env.clock.advance(WORKER_TIMEOUT / 2);
    assert!(env.state.touch(lost, env.address(lost).serial));
    env.clock
        .advance(WORKER_TIMEOUT / 2 + Duration::from_secs(1));
    assert!(
        env.step(|state, change| state.reap(WORKER_TIMEOUT, change))
            .is_empty()
    );
    env.clock.advance(WORKER_TIMEOUT);
    let reaped = env.step(|state, change| state.reap(WORKER_TIMEOUT, change));
    assert_eq!(reaped, vec![lost]);
    assert!(env.take(lost).is_empty(), "a lost worker is not told");
    assert_eq!(env.hangups, vec![env.address(lost)]);
    let task = &env.state.tasks[&ids[0]];
    assert_eq!((task.state, task.attempt), (TaskState::Pending, 2));
    assert_eq!(task.attempts[0].state, TaskState::Failed);
    assert_eq!(task.attempts[0].reason, Some(Reason::WorkerLost));
    assert!(task.attempts[0].ended_at.is_some());
    assert!(env.last_rows.dirty.attempts.contains(&(ids[0], 1)));
    assert_eq!(env.state.worker_views(&env.admin)[0].status, "lost");
    // The next worker takes it first, before the task that was waiting.
    let next = env.connect(Setup::default());
    env.take(next);
    assert_eq!(env.state.tasks[&ids[0]].state, TaskState::Assigned);
    assert_eq!(env.state.tasks[&ids[0]].worker, Some(next));
    assert_eq!(env.task_state(ids[1]), TaskState::Pending);
}

#[test]
fn a_stale_report_is_refused_with_a_cancel_and_changes_nothing() {
    let mut env = TestEnv::new();
    let first = env.connect(Setup::default());
    let ids = env.submit(tasks("b", 1));
    env.clock.advance(WORKER_TIMEOUT * 2);
    env.step(|state, change| state.reap(WORKER_TIMEOUT, change));
    let second = env.connect(Setup::default());
    env.take(second);
    assert_eq!(env.state.tasks[&ids[0]].attempt, 2);

    // The lost worker comes back with a success of attempt 1: refused.
    let mut hello = env.hello(Some(first), &Setup::default());
    let mut late = TaskReport::new(ids[0], 1, TaskState::Succeeded);
    late.at = env.clock.now();
    hello.tasks.push(late);
    env.take(first);
    env.connect_with(hello);
    let messages = env.take(first);
    assert!(
        messages.contains(&ToWorker::Cancel {
            task_id: ids[0],
            attempt: 1,
            reason: "this attempt is no longer current".to_owned(),
        }),
        "{messages:?}"
    );
    assert_eq!(env.task_state(ids[0]), TaskState::Assigned);
    assert_eq!(env.state.tasks[&ids[0]].worker, Some(second));

    // A worker reporting on another worker's attempt: refused too, and nothing is written.
    env.report_state(first, ids[0], 2, TaskState::Succeeded);
    assert_eq!(
        env.take(first),
        vec![ToWorker::Cancel {
            task_id: ids[0],
            attempt: 2,
            reason: "this attempt is no longer current".to_owned(),
        }]
    );
    assert!(env.last_rows.dirty.is_empty());
    assert_eq!(env.task_state(ids[0]), TaskState::Assigned);
    assert!(env.take(second).is_empty());
}

#[test]
fn killing_a_task_while_it_downloads_cancels_it_on_its_worker_and_frees_the_slot() {
    let mut env = TestEnv::new();
    let worker = env.connect(Setup::default());
    let ids = env.submit(tasks("b", 2));
    env.take(worker);
    env.report_state(worker, ids[0], 1, TaskState::Downloading);
    env.step(|state, change| state.cancel(ids[0], Reason::Killed, change))
        .unwrap();
    let messages = env.take(worker);
    assert_eq!(
        messages[0],
        ToWorker::Cancel {
            task_id: ids[0],
            attempt: 1,
            reason: "killed by a user".to_owned()
        }
    );
    assert!(
        matches!(&messages[1..], [ToWorker::Assign { task_id, attempt: 1, .. }] if *task_id == ids[1]),
        "the freed slot takes the next task: {messages:?}"
    );
    let killed = &env.state.tasks[&ids[0]];
    assert_eq!(killed.state, TaskState::Canceled);
    assert_eq!(killed.attempts[0].state, TaskState::Canceled);
    assert_eq!(killed.reason, Some(Reason::Killed));
    assert!(!env.state.workers[&worker].tasks.contains(&ids[0]));
    // A kill of a finished task is refused.
    let again = env.step(|state, change| state.cancel(ids[0], Reason::Killed, change));
    assert!(matches!(again, Err(crate::Error::AlreadyFinished { .. })));
}

#[test]
fn automatic_retries_then_a_manual_retry_continue_the_numbering() {
    let mut env = TestEnv::new();
    let worker = env.connect(Setup::default());
    env.take(worker);
    let ids = env.submit(vec![TaskRequest {
        retry: 2,
        ..task("b")
    }]);
    let id = ids[0];
    let mut attempts = Vec::new();
    for attempt in 1..=3 {
        attempts.extend(
            env.take(worker)
                .into_iter()
                .filter_map(|message| match message {
                    ToWorker::Assign { attempt, .. } => Some(attempt),
                    _ => None,
                }),
        );
        env.report_state(worker, id, attempt, TaskState::Running);
        env.clock.advance(Duration::from_secs(1));
        env.report_state(worker, id, attempt, TaskState::Failed);
    }
    assert_eq!(attempts, vec![1, 2, 3], "two automatic retries");
    assert_eq!(env.task_state(id), TaskState::Failed, "retries exhausted");
    env.take(worker);
    env.step(|state, change| state.retry(id, change)).unwrap();
    assert_eq!(env.take_assigned(worker), vec![(id, 4)]);
    // A retry of an unfinished task is refused.
    let again = env.step(|state, change| state.retry(id, change));
    assert!(matches!(again, Err(crate::Error::NotFinished { .. })));
}

#[test]
fn a_paused_batch_hands_out_nothing_until_resumed() {
    let mut env = TestEnv::new();
    let batch = BatchName::new("b").unwrap();
    env.submit(tasks("b", 2));
    env.step(|state, change| state.set_paused(&batch, true, change))
        .unwrap();
    assert_eq!(env.last_rows.dirty.batches, vec![batch.clone()]);
    let worker = env.connect(Setup {
        concurrency: 2,
        ..Setup::default()
    });
    env.take(worker);
    env.submit(tasks("b", 1));
    assert!(env.take(worker).is_empty(), "paused");
    env.step(|state, change| state.set_paused(&batch, false, change))
        .unwrap();
    assert_eq!(env.take_assigned(worker).len(), 2);
}

#[test]
fn stopping_a_batch_cancels_every_unfinished_task() {
    let mut env = TestEnv::new();
    let worker = env.connect(Setup::default());
    let ids = env.submit(tasks("b", 3));
    env.take(worker);
    let other = env.submit(tasks("other", 1));
    env.step(|state, change| state.stop_batch(&BatchName::new("b").unwrap(), change))
        .unwrap();
    assert!(
        ids.iter()
            .all(|id| env.task_state(*id) == TaskState::Canceled)
    );
    assert_eq!(env.state.tasks[&ids[2]].reason, Some(Reason::BatchStopped));
    assert_eq!(
        env.take(worker),
        vec![ToWorker::Cancel {
            task_id: ids[0],
            attempt: 1,
            reason: "its batch was stopped".to_owned()
        }],
        "the running one is canceled on its worker; nothing else is assigned"
    );
    assert_eq!(env.task_state(other[0]), TaskState::Pending);
    assert_eq!(env.pending_count("b"), 0);
}

#[test]
fn deleting_a_batch_removes_its_tasks_and_rows() {
    let mut env = TestEnv::new();
    let batch = BatchName::new("b").unwrap();
    let ids = env.submit(tasks("b", 2));
    env.step(|state, change| state.delete_batch(&batch, change))
        .unwrap();
    assert!(env.state.tasks.is_empty());
    assert!(env.state.batch_view(&batch).is_none());
    let rows = &env.last_rows.dirty;
    assert!(ids.iter().all(|id| rows.tasks.contains(id)));
    assert!(rows.batches.contains(&batch));
    // Rows whose key is gone are deletions for the journal.
    assert!(env.state.task_row(ids[0]).is_none());
    assert!(env.state.batch_row(&batch).is_none());
    let unknown = env.step(|state, change| state.delete_batch(&batch, change));
    assert!(matches!(unknown, Err(crate::Error::BatchNotFound(_))));
}

#[test]
fn docker_tasks_never_go_to_bare_workers() {
    let mut env = TestEnv::new();
    let bare = env.connect(Setup {
        concurrency: 4,
        ..Setup::default()
    });
    env.take(bare);
    let ids = env.submit(vec![docker_task("b"), task("b")]);
    assert_eq!(env.take_assigned(bare), vec![(ids[1], 1)]);
    assert_eq!(env.task_state(ids[0]), TaskState::Pending);
    let docker = env.connect(Setup {
        docker: true,
        ..Setup::default()
    });
    env.take(docker);
    assert_eq!(env.state.tasks[&ids[0]].worker, Some(docker));
}

#[test]
fn a_docker_only_worker_gets_no_bare_task() {
    let mut env = TestEnv::new();
    let docker_only = env.connect(Setup {
        docker: true,
        bare: false,
        ..Setup::default()
    });
    env.take(docker_only);
    let ids = env.submit(vec![task("b"), docker_task("b")]);
    assert_eq!(env.take_assigned(docker_only), vec![(ids[1], 1)]);
    assert_eq!(env.task_state(ids[0]), TaskState::Pending);
    let bare = env.connect(Setup::default());
    assert_eq!(env.state.tasks[&ids[0]].worker, Some(bare));
}

#[test]
fn restore_rebuilds_queues_counts_and_workers_from_rows() {
    let mut env = TestEnv::new();
    let worker = env.connect(Setup::default());
    let ids = env.submit(tasks("b", 3));
    env.report_state(worker, ids[0], 1, TaskState::Running);
    env.step(|state, change| state.cancel(ids[2], Reason::Killed, change))
        .unwrap();
    let (restored, repairs) = TestEnv::restored(env.snapshot()).unwrap();
    assert!(repairs.is_empty(), "consistent rows need no repair");
    assert_eq!(
        restored.state.list_batches(&restored.admin),
        env.state.list_batches(&env.admin)
    );
    assert_eq!(
        restored.state.worker_views(&restored.admin)[0].tasks,
        vec![ids[0]]
    );
    assert_eq!(restored.task_state(ids[0]), TaskState::Running);
    // The counters continue; the pending task is queued.
    let mut restored = restored;
    let more = restored.submit(tasks("b", 1));
    assert_eq!(more, vec![TaskId(4)]);
    let other = restored.connect(Setup::default());
    assert_eq!(other, WorkerId(2));
    restored.take(other);
    assert_eq!(restored.state.tasks[&ids[1]].worker, Some(other));
}

#[test]
fn restore_queues_again_an_active_task_whose_attempt_row_is_missing() {
    let mut env = TestEnv::new();
    let worker = env.connect(Setup::default());
    let ids = env.submit(tasks("b", 2));
    env.report_state(worker, ids[0], 1, TaskState::Running);
    let mut snapshot = env.snapshot();
    // A crash between the commit of the task row and that of its attempt.
    snapshot
        .attempts
        .retain(|row| row.task_id != ids[0].0 as i64);
    let (restored, repairs) = TestEnv::restored(snapshot).unwrap();
    let task = &restored.state.tasks[&ids[0]];
    assert_eq!((task.state, task.attempt), (TaskState::Pending, 2));
    assert!(
        task.message
            .as_deref()
            .is_some_and(|message| message.contains("attempt 1 has no record")),
        "{:?}",
        task.message
    );
    assert!(restored.state.workers[&worker].tasks.is_empty());
    assert!(
        repairs.dirty.tasks.contains(&ids[0]),
        "the repair is persisted"
    );
    let view = restored.state.list_batches(&restored.admin);
    assert_eq!((view[0].pending, view[0].active), (2, 0));
    // It is first in line.
    let batch = &restored.state.batches[&BatchName::new("b").unwrap()];
    let queue = batch.queues.values().next().unwrap();
    assert_eq!(queue.front(), Some(&ids[0]));
}

#[test]
fn restore_queues_again_an_active_task_whose_worker_row_is_missing() {
    let mut env = TestEnv::new();
    let worker = env.connect(Setup::default());
    let ids = env.submit(tasks("b", 1));
    env.report_state(worker, ids[0], 1, TaskState::Downloading);
    let mut snapshot = env.snapshot();
    snapshot.workers.clear();
    let (restored, repairs) = TestEnv::restored(snapshot).unwrap();
    let task = &restored.state.tasks[&ids[0]];
    assert_eq!((task.state, task.attempt), (TaskState::Pending, 2));
    assert_eq!(task.attempts[0].state, TaskState::Failed);
    assert_eq!(task.attempts[0].reason, Some(Reason::WorkerLost));
    assert!(
        task.attempts[0]
            .message
            .as_deref()
            .is_some_and(|message| message.contains("worker 1 is not known")),
        "{:?}",
        task.attempts[0].message
    );
    assert!(repairs.dirty.attempts.contains(&(ids[0], 1)));
}

/// A value restore cannot explain refuses the start, naming its row (a spec that cannot be
/// used fails its task instead: `a_task_whose_stored_spec_is_refused_now_fails_at_restore...`).
#[test]
fn restore_refuses_a_corrupt_value_naming_its_row() {
    let mut env = TestEnv::new();
    let ids = env.submit(tasks("b", 2));
    let mut snapshot = env.snapshot();
    snapshot.tasks[0].state = "exploded".to_owned();
    let Err(error) = TestEnv::restored(snapshot) else {
        panic!("an unknown state must refuse the start");
    };
    let text = crate::chain(&error);
    assert!(
        text.contains("exploded") && text.contains(&format!("task row {}", ids[0])),
        "{text}"
    );
}

#[test]
fn a_reconnecting_worker_without_its_task_gets_it_queued_again() {
    let mut env = TestEnv::new();
    let worker = env.connect(Setup::default());
    let ids = env.submit(tasks("b", 1));
    let hello = env.hello(Some(worker), &Setup::default());
    env.take(worker);
    env.connect_with(hello);
    let task = &env.state.tasks[&ids[0]];
    assert_eq!(task.attempts[0].reason, Some(Reason::WorkerLost));
    // Queued again and, the slot being free, given back as attempt 2 on the new connection.
    let messages = env.take(worker);
    assert!(
        messages
            .iter()
            .any(|message| matches!(message, ToWorker::Assign { attempt: 2, .. })),
        "{messages:?}"
    );
    assert_eq!(env.hangups.len(), 1, "the old connection is let go");
}

#[test]
fn a_task_whose_stored_spec_is_refused_now_fails_at_restore_and_the_rest_loads() {
    let mut env = TestEnv::new();
    let worker = env.connect(Setup::default());
    let ids = env.submit(tasks("b", 3));
    env.report_state(worker, ids[0], 1, TaskState::Running);
    let mut snapshot = env.snapshot();
    // Task 1 is running with a spec this version refuses (`-e KEY` without a value); task 2
    // is pending with text that is not JSON at all; task 3 is fine.
    let bad_spec = r#"{"batch":"b","command":["true"],"docker_image":"busybox","docker_options":"-e AWS_SECRET_ACCESS_KEY"}"#;
    for row in &mut snapshot.tasks {
        if row.id == ids[0].0 as i64 {
            row.spec = bad_spec.to_owned();
        } else if row.id == ids[1].0 as i64 {
            row.spec = "{not json".to_owned();
        }
    }
    let (restored, repairs) = TestEnv::restored(snapshot).expect("the server starts");
    for id in &ids[..2] {
        let task = &restored.state.tasks[id];
        assert_eq!(task.state, TaskState::Failed, "task {id}");
        assert_eq!(task.reason, Some(Reason::InvalidSpec), "task {id}");
        assert!(
            task.message
                .as_deref()
                .is_some_and(|text| text.contains("cannot be run")),
            "{:?}",
            task.message
        );
        assert!(repairs.dirty.tasks.contains(id), "the failure is stored");
    }
    // The stored text is kept as it was, for an admin to fix.
    assert_eq!(restored.state.task_row(ids[0]).unwrap().spec, bad_spec);
    assert_eq!(restored.state.task_row(ids[1]).unwrap().spec, "{not json");
    // The running attempt ended; its worker holds nothing; the good task is still pending.
    assert_eq!(
        restored.state.tasks[&ids[0]].attempts[0].reason,
        Some(Reason::InvalidSpec)
    );
    assert!(restored.state.workers[&worker].tasks.is_empty());
    assert_eq!(restored.task_state(ids[2]), TaskState::Pending);
}
