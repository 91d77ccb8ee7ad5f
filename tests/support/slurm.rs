//! A one-node Slurm cluster for tests: `munged`, `slurmctld` and `slurmd` (Debian's packages,
//! which `make test-deps` installs) started on 127.0.0.1 with a `slurm.conf` in a temporary
//! folder (free ports, state and spool folders there), stopped on drop. Needs root, as the
//! daemons do.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::s3::free_ports;

pub struct SlurmCluster {
    dir: tempfile::TempDir,
    /// `SLURM_CONF` for every Slurm command of the test.
    pub conf: PathBuf,
}

fn hostname() -> String {
    let out = Command::new("hostname")
        .arg("-s")
        .output()
        .expect("hostname");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Starts `munged` as the munge user unless one is answering already.
fn ensure_munged() {
    let socket = Path::new("/run/munge/munge.socket.2");
    if socket.exists()
        && Command::new("munge")
            .arg("-n")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    {
        return;
    }
    fs::create_dir_all("/run/munge").expect("create /run/munge (the Slurm tests need root)");
    let status = Command::new("chown")
        .args(["munge:munge", "/run/munge"])
        .status()
        .expect("chown");
    assert!(status.success(), "chown munge:munge /run/munge");
    let status = Command::new("su")
        .args(["-s", "/bin/sh", "munge", "-c", "/usr/sbin/munged"])
        .status()
        .unwrap_or_else(|e| {
            panic!("cannot start munged ({e}): `make test-deps` installs Slurm and munge")
        });
    assert!(status.success(), "munged failed to start");
}

impl SlurmCluster {
    pub fn start() -> SlurmCluster {
        ensure_munged();
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for sub in ["state", "spool", "log"] {
            fs::create_dir_all(root.join(sub)).unwrap();
        }
        let ports = free_ports(2);
        let host = hostname();
        let conf = root.join("slurm.conf");
        let text = format!(
            "ClusterName=onenet-test\n\
             SlurmctldHost={host}(127.0.0.1)\n\
             SlurmctldPort={}\n\
             SlurmdPort={}\n\
             AuthType=auth/munge\n\
             ProctrackType=proctrack/linuxproc\n\
             TaskPlugin=task/none\n\
             SelectType=select/cons_tres\n\
             SelectTypeParameters=CR_Core\n\
             AccountingStorageType=accounting_storage/none\n\
             JobCompType=jobcomp/none\n\
             MpiDefault=none\n\
             SlurmUser=root\n\
             ReturnToService=2\n\
             SchedulerParameters=sched_interval=1\n\
             StateSaveLocation={root}/state\n\
             SlurmdSpoolDir={root}/spool\n\
             SlurmctldPidFile={root}/slurmctld.pid\n\
             SlurmdPidFile={root}/slurmd.pid\n\
             SlurmctldLogFile={root}/log/slurmctld.log\n\
             SlurmdLogFile={root}/log/slurmd.log\n\
             NodeName={host} NodeAddr=127.0.0.1 CPUs=2 State=UNKNOWN\n\
             PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP\n",
            ports[0],
            ports[1],
            root = root.display()
        );
        fs::write(&conf, text).unwrap();
        let cluster = SlurmCluster { dir, conf };
        for daemon in ["slurmctld", "slurmd"] {
            let status = cluster.command(daemon).status().unwrap_or_else(|e| {
                panic!("cannot start {daemon} ({e}): `make test-deps` installs Slurm")
            });
            assert!(status.success(), "{daemon} failed: {}", cluster.logs());
        }
        cluster.wait_idle();
        cluster
    }

    /// A Slurm command seeing this cluster.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("SLURM_CONF", &self.conf).stdin(Stdio::null());
        cmd
    }

    fn wait_idle(&self) {
        let start = Instant::now();
        loop {
            let out = self
                .command("sinfo")
                .args(["--noheader", "--format=%t"])
                .output()
                .expect("sinfo");
            let state = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if state == "idle" {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "the Slurm node is `{state}` after 60 s: {}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The daemons' logs, for failure messages.
    pub fn logs(&self) -> String {
        ["slurmctld.log", "slurmd.log"]
            .iter()
            .map(|f| {
                let text =
                    fs::read_to_string(self.dir.path().join("log").join(f)).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                format!(
                    "{f}:\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn stop(&self, pid_file: &str) {
        if let Ok(pid) = fs::read_to_string(self.dir.path().join(pid_file)) {
            let _ = Command::new("kill").arg(pid.trim()).status();
        }
    }
}

impl Drop for SlurmCluster {
    fn drop(&mut self) {
        // Whatever the test left queued goes with the cluster.
        let _ = self.command("scancel").arg("--user=root").status();
        self.stop("slurmd.pid");
        self.stop("slurmctld.pid");
        std::thread::sleep(Duration::from_millis(300));
    }
}
