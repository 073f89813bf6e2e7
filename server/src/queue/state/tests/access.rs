//! Users, tokens, ownership and worker identity, event by event.

use herd_proto::access::{TokenKind, TokenRequest, UserName};
use herd_proto::session::ToWorker;
use herd_proto::{BatchName, Reason, TaskId, TaskRequest, TaskSpec, TaskState};

use super::super::{Caller, digest};
use super::env::*;
use crate::Error;
use crate::stored_spec;

impl TestEnv {
    /// Adds a user (not an admin) whose token is `herd_<name>`; the caller it stands for.
    fn user(&mut self, name: &str) -> Caller {
        let admin = self.admin.clone();
        let hash = digest(&format!("herd_{name}"));
        self.step(|state, change| {
            state.add_user(&admin, UserName::new(name).unwrap(), false, &hash, change)
        })
        .expect("a new user");
        self.state.authenticate(&hash).expect("the user's token")
    }

    /// Submits as `caller`.
    fn submit_as(&mut self, caller: &Caller, batch: &str) -> Result<Vec<TaskId>, Error> {
        let spec = TaskSpec::new(task(batch)).unwrap();
        let json = stored_spec::encode(&spec);
        self.step(|state, change| state.submit(caller, vec![(spec, json)], change))
    }

    /// A worker token, limited to `batch` if given; the caller it stands for.
    fn worker_token_for(&mut self, batch: Option<&str>, secret: &str) -> Caller {
        let admin = self.admin.clone();
        let request = TokenRequest {
            user: None,
            kind: TokenKind::Worker,
            batch: batch.map(|name| BatchName::new(name).unwrap()),
            label: String::new(),
        };
        self.step(|state, change| state.create_token(&admin, request, &digest(secret), change))
            .expect("a worker token");
        self.state.authenticate(&digest(secret)).unwrap()
    }
}

#[test]
fn the_bootstrap_makes_one_admin_and_keeps_only_hashes() {
    let mut env = TestEnv::new();
    assert!(env.admin.admin);
    assert!(
        !env.step(|state, change| state.bootstrap(&digest("herd_other"), change)),
        "a second bootstrap does nothing"
    );
    assert!(env.state.authenticate(&digest("herd_other")).is_none());
    let row = env.state.token_row(env.admin.token).unwrap();
    assert_eq!(row.hash, digest("herd_admin"));
    assert_ne!(row.hash, "herd_admin");
    assert_eq!(row.hash.len(), 64);
    assert!(
        env.state.authenticate("herd_admin").is_none(),
        "a secret is no hash"
    );
}

#[test]
fn users_see_and_change_only_their_own_tasks_and_admins_everything() {
    let mut env = TestEnv::new();
    let alice = env.user("alice");
    let bob = env.user("bob");
    let mine = env.submit_as(&alice, "a").unwrap()[0];
    let theirs = env.submit_as(&bob, "b").unwrap()[0];
    assert!(env.state.check_task(&alice, mine).is_ok());
    for refused in [
        env.state.check_task(&alice, theirs),
        env.state.task_view(&alice, theirs).map(|_| ()),
        env.state.check_batch(&alice, &BatchName::new("b").unwrap()),
    ] {
        let message = refused.expect_err("another user's").to_string();
        assert!(message.contains("belongs to"), "{message}");
    }
    let listed: Vec<TaskId> = env
        .state
        .list_tasks(&alice, None, None, 0)
        .iter()
        .map(|task| task.id)
        .collect();
    assert_eq!(listed, vec![mine]);
    let batches: Vec<String> = env
        .state
        .list_batches(&alice)
        .into_iter()
        .map(|batch| batch.name)
        .collect();
    assert_eq!(batches, vec!["a"]);
    assert_eq!(env.state.list_tasks(&env.admin, None, None, 0).len(), 2);
    assert!(env.state.check_task(&env.admin, theirs).is_ok());
    let view = env.state.task_view(&env.admin, theirs).unwrap();
    assert_eq!(view.owner.as_deref(), Some("bob"));
}

#[test]
fn a_batch_someone_else_owns_is_refused_and_nothing_is_queued() {
    let mut env = TestEnv::new();
    let alice = env.user("alice");
    let bob = env.user("bob");
    env.submit_as(&alice, "shared").unwrap();
    let before = env.state.tasks.len();
    let refused = env.submit_as(&bob, "shared").expect_err("alice's batch");
    let message = refused.to_string();
    assert!(
        message.contains("batch `shared` belongs to user `alice`") && message.contains("-b"),
        "{message}"
    );
    assert_eq!(env.state.tasks.len(), before, "nothing queued");
    // An admin may queue there.
    let admin = env.admin.clone();
    assert!(env.submit_as(&admin, "shared").is_ok());
}

#[test]
fn a_batch_a_worker_created_belongs_to_its_first_submitter() {
    let mut env = TestEnv::new();
    let worker = env.connect(Setup {
        batch: "fresh",
        ..Setup::default()
    });
    env.take(worker);
    let batch = BatchName::new("fresh").unwrap();
    assert_eq!(env.state.batches[&batch].owner, None);
    let alice = env.user("alice");
    let bob = env.user("bob");
    env.submit_as(&alice, "fresh").unwrap();
    assert_eq!(env.state.batches[&batch].owner, Some(alice.user));
    assert!(
        env.last_rows.dirty.batches.contains(&batch),
        "the owner is stored"
    );
    assert!(env.submit_as(&bob, "fresh").is_err());
}

#[test]
fn only_admins_manage_users_tokens_and_workers() {
    let mut env = TestEnv::new();
    let alice = env.user("alice");
    let worker = env.connect(Setup::default());
    let refusals = [
        env.step(|state, change| {
            state
                .add_user(
                    &alice,
                    UserName::new("mallory").unwrap(),
                    true,
                    &digest("herd_m"),
                    change,
                )
                .map(|_| ())
        }),
        env.step(|state, change| {
            let request = TokenRequest {
                user: None,
                kind: TokenKind::Worker,
                batch: None,
                label: String::new(),
            };
            state
                .create_token(&alice, request, &digest("herd_w"), change)
                .map(|_| ())
        }),
        env.state.user_infos(&alice).map(|_| ()),
        super::super::require_admin(&alice, "delete workers"),
    ];
    for refused in refusals {
        let message = refused.expect_err("admins only").to_string();
        assert!(message.contains("only an admin may"), "{message}");
    }
    assert!(env.state.authenticate(&digest("herd_m")).is_none());
    assert!(env.state.workers.contains_key(&worker));
    // A user lists their own tokens, not others'.
    let own = env.state.token_infos(&alice, None).unwrap();
    assert!(own.iter().all(|token| token.user.as_str() == "alice"));
    assert!(
        env.state
            .token_infos(&alice, Some(&UserName::new("admin").unwrap()))
            .is_err()
    );
}

#[test]
fn a_revoked_token_is_refused_and_its_worker_sessions_are_closed() {
    let mut env = TestEnv::new();
    let alice = env.user("alice");
    let worker = env.connect(Setup::default());
    let address = env.address(worker);
    let ids = env.submit(vec![TaskRequest {
        crash_limit: Some(1),
        ..task("b")
    }]);
    assert_eq!(env.state.tasks[&ids[0]].worker, Some(worker));
    // Alice cannot revoke the workers' token (it is the admin's).
    assert!(
        env.step(|state, change| state.revoke_token(&alice, env_token(&alice, 2), change))
            .is_err()
    );
    let token = env.worker_token.token;
    let admin = env.admin.clone();
    let info = env
        .step(|state, change| state.revoke_token(&admin, token, change))
        .unwrap();
    assert!(info.revoked_at.is_some());
    assert!(env.state.authenticate(&digest("herd_worker")).is_none());
    assert!(env.hangups.contains(&address), "its session is closed");
    // Its task is queued again at once, not as a crash; the worker is stopped, not lost.
    let task = &env.state.tasks[&ids[0]];
    assert_eq!((task.state, task.attempt), (TaskState::Pending, 2));
    assert_eq!(task.attempts[0].reason, Some(Reason::WorkerStopped));
    assert_eq!(env.state.worker_views(&env.admin)[0].status, "stopped");
    assert!(env.last_rows.dirty.tokens.contains(&token), "stored");
    // Alice revokes her own.
    let own = alice.token;
    env.step(|state, change| state.revoke_token(&alice, own, change))
        .unwrap();
    assert!(env.state.authenticate(&digest("herd_alice")).is_none());
}

/// Any id other than `caller`'s own token (for the refusal above).
fn env_token(caller: &Caller, other: u64) -> u64 {
    if caller.token == other {
        other + 1
    } else {
        other
    }
}

#[test]
fn user_tokens_open_no_session_and_batch_tokens_only_their_batch() {
    let mut env = TestEnv::new();
    let alice = env.user("alice");
    let hello = env.hello(None, &Setup::default());
    let refused = env
        .step(|state, change| {
            state.connect(&alice, hello, "herd_k", 99, HEARTBEAT, TIMEOUT, change)
        })
        .expect_err("a user token");
    assert!(refused.to_string().contains("worker token"), "{refused}");
    let limited = env.worker_token_for(Some("only"), "herd_only");
    let hello = env.hello(None, &Setup::default());
    let refused = env
        .step(|state, change| {
            state.connect(&limited, hello, "herd_k", 100, HEARTBEAT, TIMEOUT, change)
        })
        .expect_err("another batch");
    assert!(
        refused.to_string().contains("serves batch `only` only"),
        "{refused}"
    );
    assert!(env.state.workers.is_empty(), "no worker registered");
    let hello = env.hello(
        None,
        &Setup {
            batch: "only",
            ..Setup::default()
        },
    );
    assert!(
        env.step(|state, change| state
            .connect(&limited, hello, "herd_k", 101, HEARTBEAT, TIMEOUT, change))
            .is_ok()
    );
}

#[test]
fn a_session_cannot_take_another_worker_s_identity_or_its_attempts() {
    let mut env = TestEnv::new();
    let victim = env.connect(Setup::default());
    env.take(victim);
    let ids = env.submit(tasks("b", 1));
    assert_eq!(env.take_assigned(victim), vec![(ids[0], 1)]);
    // Another session names the victim's id, with a wrong key and then none, and claims to
    // hold its attempt.
    for key in [Some("herd_guess".to_owned()), None] {
        let mut hello = env.hello(Some(victim), &Setup::default());
        hello.resume_key = key;
        let mut report = herd_proto::TaskReport::new(ids[0], 1, TaskState::Succeeded);
        report.exit_code = Some(0);
        hello.tasks = vec![report];
        let intruder = env.connect_with(hello);
        assert_ne!(intruder, victim, "a new identity, not the victim's");
        let told = env.take(intruder);
        assert!(
            told.iter().any(|message| matches!(
                message,
                ToWorker::Cancel { task_id, attempt: 1, .. } if *task_id == ids[0]
            )),
            "its claim on the victim's attempt is refused: {told:?}"
        );
        assert_eq!(env.task_state(ids[0]), TaskState::Assigned, "unchanged");
        assert_eq!(env.state.tasks[&ids[0]].worker, Some(victim));
        assert!(
            env.state.workers[&victim].connection.is_some(),
            "the victim stays connected"
        );
    }
    // The victim itself, with its key, resumes its identity and keeps its attempt.
    let hello = env.hello(Some(victim), &Setup::default());
    let mut hello = hello;
    hello.tasks = vec![herd_proto::TaskReport::new(ids[0], 1, TaskState::Running)];
    assert_eq!(env.connect_with(hello), victim);
    assert_eq!(env.task_state(ids[0]), TaskState::Running);
}

#[test]
fn reports_and_logs_count_only_for_the_attempt_a_worker_holds() {
    let mut env = TestEnv::new();
    let first = env.connect(Setup::default());
    let second = env.connect(Setup::default());
    env.take(first);
    env.take(second);
    let ids = env.submit(tasks("b", 1));
    let holder = if env.take_assigned(first).is_empty() {
        env.take(second);
        second
    } else {
        first
    };
    let other = if holder == first { second } else { first };
    assert!(env.state.log_allowed(holder, ids[0], 1));
    assert!(!env.state.log_allowed(other, ids[0], 1), "not its attempt");
    assert!(
        !env.state.log_allowed(holder, ids[0], 2),
        "not that attempt"
    );
    // The other worker's report on it is refused and changes nothing.
    env.report_state(other, ids[0], 1, TaskState::Failed);
    assert_eq!(env.task_state(ids[0]), TaskState::Assigned);
    assert!(matches!(
        env.take(other).as_slice(),
        [ToWorker::Cancel { .. }]
    ));
    // Once it ended, its own worker may not write its log any more.
    env.report_state(holder, ids[0], 1, TaskState::Running);
    env.report_state(holder, ids[0], 1, TaskState::Succeeded);
    assert!(!env.state.log_allowed(holder, ids[0], 1));
    assert_eq!(
        env.state.tasks[&ids[0]].attempts[0].reason, None::<Reason>,
        "its own success counted"
    );
}

#[test]
fn tasks_from_before_users_are_the_admins_and_old_workers_cannot_be_resumed() {
    let mut env = TestEnv::new();
    let alice = env.user("alice");
    let worker = env.connect(Setup::default());
    let ids = env.submit(tasks("b", 1));
    let mut snapshot = env.snapshot();
    // Rows as a database from before users holds them: no owners, no resume key.
    for row in &mut snapshot.tasks {
        row.owner = None;
    }
    for row in &mut snapshot.batches {
        row.owner = None;
    }
    for row in &mut snapshot.workers {
        row.resume_hash = None;
        row.token_id = None;
    }
    let (mut restored, _) = TestEnv::restored(snapshot).unwrap();
    let admin = restored.admin.clone();
    assert!(restored.state.check_task(&admin, ids[0]).is_ok());
    assert!(restored.state.check_task(&alice, ids[0]).is_err());
    assert!(restored.state.list_tasks(&alice, None, None, 0).is_empty());
    assert_eq!(
        restored.state.task_view(&admin, ids[0]).unwrap().owner,
        None
    );
    // Such a batch goes to whoever queues into it first.
    assert!(restored.submit_as(&alice, "b").is_ok());
    restored.keys = env.keys.clone();
    let hello = restored.hello(Some(worker), &Setup::default());
    assert_ne!(
        restored.connect_with(hello),
        worker,
        "no key to check: a new identity"
    );
}

#[test]
fn restore_keeps_users_tokens_owners_and_resume_keys() {
    let mut env = TestEnv::new();
    let alice = env.user("alice");
    let ids = env.submit_as(&alice, "a").unwrap();
    let worker = env.connect(Setup::default());
    let (mut restored, repairs) = TestEnv::restored(env.snapshot()).unwrap();
    assert!(repairs.is_empty());
    let again = restored.state.authenticate(&digest("herd_alice")).unwrap();
    assert_eq!(again.user, alice.user);
    assert!(restored.state.check_task(&again, ids[0]).is_ok());
    let batch = BatchName::new("a").unwrap();
    assert_eq!(restored.state.batches[&batch].owner, Some(alice.user));
    restored.keys = env.keys.clone();
    let hello = restored.hello(Some(worker), &Setup::default());
    assert_eq!(
        restored.connect_with(hello),
        worker,
        "resumed after a restart"
    );
}
