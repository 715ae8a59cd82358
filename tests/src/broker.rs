//! Driving the local RabbitMQ node: restarts and alarms for the `disruptive` tests, and queue depths.

use std::process::Command;

/// Runs `rabbitmqctl ARGS` against the local node and panics with the arguments when it fails.
pub fn rabbitmqctl(args: &[&str]) {
    let status = Command::new("rabbitmqctl")
        .args(args)
        .status()
        .expect("rabbitmqctl runs");
    assert!(status.success(), "rabbitmqctl {args:?} failed");
}

/// What `rabbitmqctl ARGS` printed; panics with the arguments when it fails.
pub fn rabbitmqctl_output(args: &[&str]) -> String {
    let output = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("rabbitmqctl runs");
    assert!(output.status.success(), "rabbitmqctl {args:?} failed");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// Messages ready in `queue` on the local broker (not yet handed to a consumer), by a passive declare.
pub async fn ready_messages(queue: &str) -> u32 {
    let connection = lapin::Connection::connect(
        "amqp://guest:guest@127.0.0.1:5672/%2f",
        lapin::ConnectionProperties::default(),
    )
    .await
    .expect("the local broker answers");
    let channel = connection.create_channel().await.unwrap();
    let ready = shared::queue::ready_messages(&channel, queue)
        .await
        .unwrap_or_else(|e| panic!("queue {queue}: {e}"));
    let _ = connection.close(200, "done".into()).await;
    ready
}

/// A RabbitMQ memory alarm: while it is raised the broker stops reading from every connection that
/// publishes. Raised by setting the memory high watermark far below what the node uses; dropping the
/// guard puts the watermark back and waits for the alarm to clear.
#[derive(Debug)]
pub struct MemoryAlarm {
    previous: String,
}

impl MemoryAlarm {
    /// Raises the alarm and waits (up to 30 s) until the broker reports it.
    pub fn raise() -> Self {
        let previous =
            rabbitmqctl_output(&["eval", "vm_memory_monitor:get_vm_memory_high_watermark()."]);
        assert!(
            previous.parse::<f64>().is_ok(),
            "the watermark is a fraction here, not {previous}"
        );
        let alarm = Self { previous };
        rabbitmqctl(&["set_vm_memory_high_watermark", "0.0000001"]);
        wait_for_alarms(true);
        alarm
    }

    /// Clears the alarm now (dropping the guard does the same).
    pub fn clear(self) {}
}

impl Drop for MemoryAlarm {
    fn drop(&mut self) {
        rabbitmqctl(&["set_vm_memory_high_watermark", &self.previous]);
        wait_for_alarms(false);
    }
}

fn wait_for_alarms(raised: bool) {
    for _ in 0..300 {
        let alarms = rabbitmqctl_output(&["eval", "rabbit_alarm:get_alarms()."]);
        if alarms.contains("memory") == raised {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!(
        "the memory alarm is not {}",
        if raised { "raised" } else { "cleared" }
    );
}
