"""Tasks: data, templates, verbalizers, few-shot sampling and metrics."""

from .metrics import accuracy, macro_f1
from .spec import TaskSpec, parse_task_yaml
from .task import Example, FewShot, Task, builtin_tasks, load_task

__all__ = ["Example", "FewShot", "Task", "TaskSpec", "accuracy", "builtin_tasks", "load_task", "macro_f1",
           "parse_task_yaml"]
