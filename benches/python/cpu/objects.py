# Objects and method calls: a task scheduler with inheritance, attributes and queues
# (in the spirit of the Richards benchmark).
class Task:
    def __init__(self, name, priority, work):
        self.name = name
        self.priority = priority
        self.work = work
        self.done = 0

    def run(self, scheduler):
        self.done += 1
        return self.done < self.work

    def __lt__(self, other):
        return self.priority < other.priority


class IoTask(Task):
    def run(self, scheduler):
        scheduler.io_count += 1
        return super().run(scheduler)


class WorkerTask(Task):
    def run(self, scheduler):
        total = 0
        for i in range(self.priority):
            total += i * self.done
        scheduler.work_total += total % 7
        return super().run(scheduler)


class Scheduler:
    def __init__(self):
        self.queue = []
        self.io_count = 0
        self.work_total = 0
        self.switches = 0

    def add(self, task):
        self.queue.append(task)

    def run(self):
        while self.queue:
            self.queue.sort()
            task = self.queue.pop(0)
            self.switches += 1
            if task.run(self):
                task.priority += 3
                self.queue.append(task)
        return self.switches, self.io_count, self.work_total


scheduler = Scheduler()
for i in range(60):
    cls = IoTask if i % 3 == 0 else WorkerTask
    scheduler.add(cls(f"task{i}", i % 17, 20 + i % 50))
print(scheduler.run())
