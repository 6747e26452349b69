"""Jobs run off the UI thread; pause, step, resume and stop reach the worker; errors become messages."""
import threading
import time

from knn_explorer.gui.workers import Job, run_job


def test_items_arrive_on_the_ui_thread_and_the_result_last(qtbot):
    ui_thread = threading.get_ident()
    seen = []

    def count(control):
        assert threading.get_ident() != ui_thread
        for i in range(5):
            control.checkpoint()
            control.emit(i)
        return "done"

    job = Job(count)
    job.item.connect(lambda i: seen.append((i, threading.get_ident())))
    with qtbot.waitSignal(job.finished, timeout=5000) as finished:
        job.start()
    assert finished.args == ["done"]
    assert [i for i, _ in seen] == [0, 1, 2, 3, 4]
    assert {thread for _, thread in seen} == {ui_thread}
    job.wait()


def test_step_lets_one_item_through_then_pauses_and_stop_cancels(qtbot):
    seen = []

    def endless(control):
        i = 0
        while True:
            control.checkpoint()
            control.emit(i)
            i += 1

    job = Job(endless, start_paused=True)
    job.item.connect(seen.append)
    job.start()
    time.sleep(0.2)
    qtbot.wait(50)
    assert seen == []
    job.step()
    qtbot.waitUntil(lambda: seen == [0], timeout=5000)
    qtbot.wait(200)
    assert seen == [0] and job.control.paused
    job.resume()
    qtbot.waitUntil(lambda: len(seen) > 10, timeout=5000)
    with qtbot.waitSignal(job.cancelled, timeout=5000):
        job.stop()
    job.wait()


def test_an_exception_in_a_job_becomes_a_one_line_message(qtbot):
    def broken(_control):
        raise RuntimeError("the datastore\nis on fire")

    # Connected by run_job before the thread starts: a job that fails at once must not race its listener.
    messages = []
    run_job(broken, failed=messages.append)
    qtbot.waitUntil(lambda: bool(messages), timeout=5000)
    assert messages == ["the datastore is on fire"]
