//! The crash limit, goodbyes, the quarantine of broken workers, and where retries go, on the
//! fake clock.

use std::time::Duration;

use herd_proto::session::ToWorker;
use herd_proto::{Reason, TaskId, TaskReport, TaskRequest, TaskState, WorkerId};

use super::super::Clock;
use super::env::*;

/// Connects a worker named `name` to batch `b`.
fn connect_named(env: &mut TestEnv, name: &str) -> WorkerId {
    let mut hello = env.hello(None, &Setup::default());
    hello.name = name.to_owned();
    env.connect_with(hello)
}

/// The assignments among `worker`'s new messages (welcomes and acks aside).
fn assigned(env: &mut TestEnv, worker: WorkerId) -> Vec<(TaskId, u32)> {
    env.take(worker)
        .into_iter()
        .filter_map(|message| match message {
            ToWorker::Assign {
                task_id, attempt, ..
            } => Some((task_id, attempt)),
            _ => None,
        })
        .collect()
}

/// Lets the worker timeout pass with only `alive` heard from, and reaps.
fn reap_all_but(env: &mut TestEnv, alive: &[WorkerId]) -> Vec<WorkerId> {
    env.clock.advance(WORKER_TIMEOUT + Duration::from_secs(1));
    for worker in alive {
        let serial = env.address(*worker).serial;
        assert!(env.state.touch(*worker, serial));
    }
    env.step(|state, change| state.reap(WORKER_TIMEOUT, change))
}

/// Reports `task`'s attempt failed with `reason`.
fn fail(env: &mut TestEnv, worker: WorkerId, task: TaskId, attempt: u32, reason: Reason) {
    let mut report = TaskReport::new(task, attempt, TaskState::Failed);
    report.at = env.clock.now();
    report.reason = Some(reason);
    report.message = Some(format!("{reason} failure for the test"));
    env.report(worker, report);
}

fn with_crash_limit(crash_limit: Option<u32>) -> TaskRequest {
    TaskRequest {
        crash_limit,
        ..task("b")
    }
}

fn with_retry(retry: u32) -> TaskRequest {
    TaskRequest { retry, ..task("b") }
}

#[test]
fn a_task_lost_with_three_workers_fails_with_crash_limit_naming_them() {
    let mut env = TestEnv::new();
    let ids = env.submit(vec![task("b"), task("b")]);
    let mut crashed = Vec::new();
    for round in 1..=3 {
        let name = format!("node-{round}");
        let worker = connect_named(&mut env, &name);
        crashed.push((worker, name));
        let assigned = env.take(worker);
        assert!(
            assigned.iter().any(|message| matches!(
                message,
                ToWorker::Assign { task_id, attempt, .. } if *task_id == ids[0] && *attempt == round
            )),
            "the lost task goes first, attempt {round}: {assigned:?}"
        );
        let lost = reap_all_but(&mut env, &[]);
        assert_eq!(lost, vec![worker]);
        if round < 3 {
            let task = &env.state.tasks[&ids[0]];
            assert_eq!((task.state, task.attempt), (TaskState::Pending, round + 1));
        }
    }
    let task = &env.state.tasks[&ids[0]];
    assert_eq!(task.state, TaskState::Failed);
    assert_eq!(task.reason, Some(Reason::CrashLimit));
    assert_eq!(task.attempts.len(), 3);
    assert!(
        task.attempts
            .iter()
            .all(|attempt| attempt.reason == Some(Reason::WorkerLost))
    );
    let message = task.message.as_deref().expect("a message");
    for (worker, name) in &crashed {
        assert!(message.contains(&format!("{worker} ({name})")), "{message}");
    }
    assert!(message.contains("--crash-limit 3"), "{message}");
    assert!(env.last_rows.dirty.tasks.contains(&ids[0]));
    // The other task still runs, on the next worker; the failed one is not given again.
    let healthy = connect_named(&mut env, "healthy");
    assert_eq!(assigned(&mut env, healthy), vec![(ids[1], 1)]);
    run_to_success(&mut env, healthy, ids[1], Duration::from_secs(1));
    assert_eq!(env.task_state(ids[1]), TaskState::Succeeded);
    assert!(
        assigned(&mut env, healthy)
            .iter()
            .all(|(id, _)| *id != ids[0])
    );
}

#[test]
fn the_crash_limit_is_the_task_s_own_and_zero_means_none() {
    let mut env = TestEnv::new();
    let ids = env.submit(vec![with_crash_limit(Some(1)), with_crash_limit(Some(0))]);
    for _ in 0..5 {
        let worker = connect_named(&mut env, "crashy");
        env.take(worker);
        reap_all_but(&mut env, &[]);
    }
    let strict = &env.state.tasks[&ids[0]];
    assert_eq!(strict.state, TaskState::Failed);
    assert_eq!(strict.reason, Some(Reason::CrashLimit));
    assert_eq!(strict.attempts.len(), 1);
    let unlimited = &env.state.tasks[&ids[1]];
    assert_eq!(unlimited.state, TaskState::Pending);
    assert!(
        unlimited.attempts.len() >= 4,
        "{}",
        unlimited.attempts.len()
    );
}

#[test]
fn crashes_and_retries_are_counted_apart() {
    let mut env = TestEnv::new();
    let ids = env.submit(vec![TaskRequest {
        retry: 1,
        crash_limit: Some(2),
        ..task("b")
    }]);
    // A crash does not use up the retry...
    let first = connect_named(&mut env, "first");
    env.take(first);
    reap_all_but(&mut env, &[]);
    // ...and a failure of the task's own is not a crash.
    let second = connect_named(&mut env, "second");
    assert_eq!(assigned(&mut env, second), vec![(ids[0], 2)]);
    env.report_state(second, ids[0], 2, TaskState::Failed);
    // The only worker there is takes its retry again.
    assert_eq!(assigned(&mut env, second), vec![(ids[0], 3)]);
    reap_all_but(&mut env, &[]);
    let task = &env.state.tasks[&ids[0]];
    assert_eq!(task.state, TaskState::Failed);
    assert_eq!(task.reason, Some(Reason::CrashLimit));
    assert_eq!(task.attempts.len(), 3);
}

#[test]
fn a_worker_that_says_goodbye_hands_its_tasks_back_without_a_crash() {
    let mut env = TestEnv::new();
    let ids = env.submit(vec![with_crash_limit(Some(1))]);
    let leaving = connect_named(&mut env, "leaving");
    assert_eq!(assigned(&mut env, leaving), vec![(ids[0], 1)]);
    let address = env.address(leaving);
    // A goodbye from an older connection changes nothing.
    env.step(|state, change| state.goodbye(leaving, address.serial + 100, change));
    assert_eq!(env.task_state(ids[0]), TaskState::Assigned);
    env.step(|state, change| state.goodbye(leaving, address.serial, change));
    let task = &env.state.tasks[&ids[0]];
    assert_eq!((task.state, task.attempt), (TaskState::Pending, 2));
    assert_eq!(task.attempts[0].reason, Some(Reason::WorkerStopped));
    assert!(env.hangups.contains(&address), "the stream is closed");
    assert!(env.take(leaving).is_empty(), "a leaving worker is not told");
    assert_eq!(env.state.worker_views(&env.admin)[0].status, "stopped");
    // Not reaped as lost later, and its tasks go to the next worker, crash limit untouched.
    assert!(reap_all_but(&mut env, &[]).is_empty());
    let next = connect_named(&mut env, "next");
    assert_eq!(assigned(&mut env, next), vec![(ids[0], 2)]);
    env.report_state(next, ids[0], 2, TaskState::Running);
    env.report_state(next, ids[0], 2, TaskState::Succeeded);
    assert_eq!(env.task_state(ids[0]), TaskState::Succeeded);
}

#[test]
fn a_deleted_worker_s_tasks_are_not_crashes() {
    let mut env = TestEnv::new();
    let ids = env.submit(vec![with_crash_limit(Some(1))]);
    let deleted = connect_named(&mut env, "deleted");
    env.take(deleted);
    env.step(|state, change| state.delete_worker(deleted, change))
        .expect("deleted");
    let task = &env.state.tasks[&ids[0]];
    assert_eq!((task.state, task.attempt), (TaskState::Pending, 2));
    assert_eq!(task.attempts[0].reason, Some(Reason::WorkerStopped));
}

/// Fails the attempts `worker` is given with `reason`, `count` of them, a second apart.
/// Assignments beyond `count` in the last message batch are left as they are.
fn fail_assigned(env: &mut TestEnv, worker: WorkerId, reason: Reason, count: usize) {
    let mut queued = Vec::new();
    for _ in 0..count {
        if queued.is_empty() {
            queued = assigned(env, worker);
            queued.reverse();
        }
        let (task, attempt) = queued.pop().expect("an assignment to fail");
        env.clock.advance(Duration::from_secs(1));
        fail(env, worker, task, attempt, reason);
    }
}

#[test]
fn a_worker_whose_attempts_keep_failing_is_quarantined_and_its_tasks_run_elsewhere() {
    let mut env = TestEnv::new();
    let ids = env.submit((0..6).map(|_| with_retry(1)).collect());
    let broken = connect_named(&mut env, "broken");
    fail_assigned(&mut env, broken, Reason::Executor, 4);
    assert_eq!(env.state.worker_views(&env.admin)[0].status, "connected");
    fail_assigned(&mut env, broken, Reason::Executor, 1);
    let now = env.clock.now();
    let view = &env.state.worker_views(&env.admin)[0];
    assert_eq!(view.status, "quarantined");
    let reason = view.quarantine_reason.as_deref().expect("a reason");
    assert!(
        reason.contains("last 5 attempts") && reason.contains("executor"),
        "{reason}"
    );
    assert_eq!(
        view.quarantined_until.map(|until| until.0 - now.0),
        Some(30_000)
    );
    let sent = env.take(broken);
    assert!(
        sent.iter()
            .all(|message| !matches!(message, ToWorker::Assign { .. })),
        "a quarantined worker gets no task: {sent:?}"
    );
    // A healthy worker runs them all, the retries of the failed ones included.
    let healthy = connect_named(&mut env, "healthy");
    let mut to_run = assigned(&mut env, healthy);
    while let Some((task, attempt)) = to_run.pop() {
        env.report_state(healthy, task, attempt, TaskState::Running);
        env.report_state(healthy, task, attempt, TaskState::Succeeded);
        to_run.extend(assigned(&mut env, healthy));
    }
    for id in &ids {
        let task = &env.state.tasks[id];
        assert_eq!(
            task.state,
            TaskState::Succeeded,
            "task {id} on {:?}, attempt {}",
            task.worker,
            task.attempt
        );
    }
    assert!(env.take(broken).is_empty());
    // The quarantine ends at the reaper's tick after 30 s, not before.
    env.clock.advance(Duration::from_secs(20));
    let (broken_serial, healthy_serial) = (env.address(broken).serial, env.address(healthy).serial);
    assert!(env.state.touch(broken, broken_serial) && env.state.touch(healthy, healthy_serial));
    env.step(|state, change| state.reap(WORKER_TIMEOUT, change));
    assert_eq!(env.state.worker_views(&env.admin)[0].status, "quarantined");
    env.clock.advance(Duration::from_secs(11));
    env.step(|state, change| state.reap(WORKER_TIMEOUT, change));
    let view = &env.state.worker_views(&env.admin)[0];
    assert_eq!(view.status, "connected");
    assert_eq!(view.quarantine_reason, None);
    // It takes tasks again (the healthy one gone); five more failures quarantine it twice as
    // long.
    env.step(|state, change| state.goodbye(healthy, healthy_serial, change));
    env.submit((0..5).map(|_| with_retry(0)).collect());
    fail_assigned(&mut env, broken, Reason::Input, 5);
    let now = env.clock.now();
    let view = &env.state.worker_views(&env.admin)[0];
    assert_eq!(view.status, "quarantined");
    assert_eq!(
        view.quarantined_until.map(|until| until.0 - now.0),
        Some(60_000)
    );
    // Each start and end reaches the server's log, after the commit.
    assert_eq!(
        env.quarantines,
        vec![(broken, Some(30)), (broken, None), (broken, Some(60))]
    );
}

#[test]
fn failures_of_the_task_s_own_or_spread_out_do_not_quarantine() {
    let mut env = TestEnv::new();
    env.submit((0..20).map(|_| with_retry(0)).collect());
    let worker = connect_named(&mut env, "w");
    fail_assigned(&mut env, worker, Reason::ExitCode, 6);
    fail_assigned(&mut env, worker, Reason::Timeout, 1);
    assert_eq!(env.state.worker_views(&env.admin)[0].status, "connected");
    // Five that blame the worker, but over more than the minute.
    for _ in 0..5 {
        env.clock.advance(Duration::from_secs(15));
        let serial = env.address(worker).serial;
        assert!(env.state.touch(worker, serial));
        fail_assigned(&mut env, worker, Reason::Output, 1);
    }
    assert_eq!(env.state.worker_views(&env.admin)[0].status, "connected");
    // An exit-code failure breaks a run of them.
    fail_assigned(&mut env, worker, Reason::ExitCode, 1);
    fail_assigned(&mut env, worker, Reason::Executor, 4);
    fail_assigned(&mut env, worker, Reason::ExitCode, 1);
    fail_assigned(&mut env, worker, Reason::Executor, 1);
    assert_eq!(env.state.worker_views(&env.admin)[0].status, "connected");
}

#[test]
fn quarantine_can_be_turned_off() {
    let mut env = TestEnv::new();
    env.state.quarantine_policy.after = 0;
    env.submit((0..8).map(|_| with_retry(0)).collect());
    let worker = connect_named(&mut env, "w");
    fail_assigned(&mut env, worker, Reason::Executor, 8);
    assert_eq!(env.state.worker_views(&env.admin)[0].status, "connected");
}

#[test]
fn a_retry_prefers_a_worker_it_has_not_failed_on() {
    let mut env = TestEnv::new();
    let ids = env.submit(vec![with_retry(2), task("b")]);
    let first = connect_named(&mut env, "first");
    let second = connect_named(&mut env, "second");
    assert_eq!(assigned(&mut env, first), vec![(ids[0], 1)]);
    assert_eq!(assigned(&mut env, second), vec![(ids[1], 1)]);
    env.report_state(first, ids[0], 1, TaskState::Failed);
    // The first worker is free, but leaves the retry to the second one.
    assert!(
        env.take(first)
            .iter()
            .all(|message| !matches!(message, ToWorker::Assign { .. }))
    );
    assert_eq!(env.task_state(ids[0]), TaskState::Pending);
    run_to_success(&mut env, second, ids[1], Duration::from_secs(1));
    assert_eq!(assigned(&mut env, second), vec![(ids[0], 2)]);
    assert_eq!(env.state.tasks[&ids[0]].worker, Some(second));
    // Failed on both: the next attempt goes to whichever is free.
    env.report_state(second, ids[0], 2, TaskState::Failed);
    assert_eq!(env.state.tasks[&ids[0]].worker, Some(first));
}

#[test]
fn a_retry_goes_back_to_the_only_worker_that_can_take_it() {
    let mut env = TestEnv::new();
    let ids = env.submit(vec![with_retry(1)]);
    let only = connect_named(&mut env, "only");
    // Another worker that cannot serve bare tasks does not count.
    let docker = env.connect(Setup {
        docker: true,
        bare: false,
        ..Setup::default()
    });
    env.take(docker);
    assert_eq!(assigned(&mut env, only), vec![(ids[0], 1)]);
    env.report_state(only, ids[0], 1, TaskState::Failed);
    assert_eq!(env.state.tasks[&ids[0]].worker, Some(only));
    assert_eq!(env.state.tasks[&ids[0]].attempt, 2);
}
