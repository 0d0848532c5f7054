#!/usr/bin/env python3
"""The deployment files must only set what the Lethe binaries read.

What the binaries read comes from their own --help (`lethe-coordinator --help`,
`lethe-coordinator migrate --help`, `lethe-worker serve --help`, and the help of any other
subcommand a deployment file runs). A setting `foo_bar` is the config-file key `foo_bar`, the
flag `--foo-bar` and the variable `LETHE_FOO_BAR`; `config` (the config file itself) is a flag
and a variable but never a key of the file.

Checked, each against the binary and subcommand that reads it:
- docker-compose.yml: each service's LETHE_* variables (`environment:` and `env_file:`), the
  flags in its entrypoint and command (the image's ENTRYPOINT from deploy/docker/*.Dockerfile),
  the config file LETHE_CONFIG names (through its bind mount), and, for workers, that
  stop_grace_period exceeds drain_grace_seconds.
- deploy/k8s/*.yaml: the same for every container of every pod template (`env:`, `envFrom:`,
  `command:`/`args:`, the image's entrypoint by image name: lethe-X runs the ENTRYPOINT of
  deploy/docker/X.Dockerfile), the ConfigMap TOML that LETHE_CONFIG names through the
  container's volume mounts, and terminationGracePeriodSeconds against drain_grace_seconds.
  ConfigMap TOML that no container mounts is checked against the binary its name says.
- deploy/config/*.toml and *.env*: every key and LETHE_* variable, commented out or not, against
  the binary the file's name says (coordinator or worker).

Usage: check_deploy.py [--bin-dir DIR] [--root DIR] [--no-self-test] [--self-test-only]
By default it first shows, on a scratch copy of the files, that it catches a few invented
mistakes, then checks the files themselves. Exit status 1 when anything is wrong.
"""

import argparse
import difflib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import tomllib

import yaml

PROGRAMS = ("lethe-coordinator", "lethe-worker")
# The program and subcommand a standalone file under deploy/config is for, by its name.
FILE_OWNERS = [("coordinator", ("lethe-coordinator", None)), ("worker", ("lethe-worker", "serve"))]


def command_name(program, sub):
    return program if sub is None else f"{program} {sub}"


# ---------------------------------------------------------------------------------------------
# What the binaries read


class Option:
    def __init__(self, flag, env, takes_value, default, bool_values, is_list=False):
        self.flag = flag
        self.key = flag.replace("-", "_")
        self.env = env
        self.takes_value = takes_value
        self.default = default
        self.is_bool = not takes_value or bool_values
        # A list: an array of strings in a file, one comma-separated string elsewhere.
        self.is_list = is_list


class Interface:
    """The settings one program (and subcommand) reads, parsed from its --help."""

    def __init__(self, program, sub, options=None, error=None, env_rule=False):
        self.program, self.sub, self.error = program, sub, error
        self.options = {o.key: o for o in options or []}
        # Whether the help states that every flag --foo-bar is also LETHE_FOO_BAR.
        self.env_rule = env_rule

    @property
    def name(self):
        return command_name(self.program, self.sub)

    def env_names(self):
        return ["LETHE_" + k.upper() for k in self.options]

    def file_keys(self):
        return [k for k in self.options if k != "config"]


OPTION_LINE = re.compile(r"^ {2,6}(?:-\w, )?--([a-z0-9][a-z0-9-]*)(?:[ =]<([^>]+)>)?(.*)$")


def parse_help(text):
    """Options of a clap --help text: flag, env variable, whether it takes a value, default."""
    blocks, current = [], None
    for line in text.splitlines():
        match = OPTION_LINE.match(line)
        if match:
            current = [match.group(1), match.group(2) is not None, match.group(3)]
            blocks.append(current)
        elif current is not None and line.startswith(" " * 7) and line.strip():
            current[2] += " " + line.strip()
        elif not line.strip() or not line.startswith(" "):
            current = None
    options = []
    for flag, takes_value, rest in blocks:
        if flag in ("help", "version"):
            continue
        env = re.search(r"\[env: ([A-Z0-9_]+)", rest)
        default = re.search(r"\[default: ([^\]]*)\]", rest)
        bools = re.search(r"\[possible values: true, false\]", rest)
        options.append(Option(flag, env.group(1) if env else None, takes_value,
                              default.group(1) if default else None, bool(bools),
                              "comma-separated" in rest))
    return options


# What a binary's --help says when it reads every flag's key from a LETHE_ variable too.
ENV_RULE = "and a LETHE_ variable"


class Binaries:
    def __init__(self, bin_dir):
        self.bin_dir = bin_dir
        self.cache = {}
        # Help must not depend on the caller's LETHE_* variables (clap shows their values).
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("LETHE_")}

    def interface(self, program, sub):
        if (program, sub) not in self.cache:
            argv = [os.path.join(self.bin_dir, program)] + ([sub] if sub else []) + ["--help"]
            try:
                run = subprocess.run(argv, capture_output=True, text=True, env=self.env, timeout=30)
            except OSError as e:
                self.cache[(program, sub)] = Interface(program, sub, error=str(e))
            else:
                if run.returncode != 0:
                    first = (run.stderr or run.stdout).strip().splitlines()[:1]
                    error = f"`{command_name(program, sub)} --help` fails: {first[0] if first else run.returncode}"
                    self.cache[(program, sub)] = Interface(program, sub, error=error)
                else:
                    self.cache[(program, sub)] = Interface(
                        program, sub, parse_help(run.stdout), env_rule=ENV_RULE in run.stdout)
        return self.cache[(program, sub)]


# ---------------------------------------------------------------------------------------------
# YAML with line numbers


class LineDict(dict):
    line = 0
    lines = {}


class LineList(list):
    lines = []


class LineLoader(yaml.SafeLoader):
    pass


def _mapping(loader, node):
    loader.flatten_mapping(node)
    result = LineDict()
    result.line, result.lines = node.start_mark.line + 1, {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        result[key] = loader.construct_object(value_node, deep=True)
        result.lines[key] = key_node.start_mark.line + 1
    return result


def _sequence(loader, node):
    result = LineList(loader.construct_object(child, deep=True) for child in node.value)
    result.lines = [child.start_mark.line + 1 for child in node.value]
    return result


LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)
LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _sequence)


def line_of(container, key, default=0):
    lines = getattr(container, "lines", None)
    try:
        return lines[key] if lines is not None else default
    except (KeyError, IndexError):
        return default


# ---------------------------------------------------------------------------------------------
# The checks


class Report:
    def __init__(self, root):
        self.root = root
        self.errors, self.notes = [], []
        self.checked = 0
        # Interface name -> settings the deployment files use that it lacks.
        self.missing = {}

    def where(self, path, line):
        rel = os.path.relpath(path, self.root)
        return f"{rel}:{line}" if line else rel

    def error(self, path, line, message):
        self.errors.append(f"{self.where(path, line)}: {message}")

    def note(self, path, line, message):
        self.notes.append(f"{self.where(path, line)}: {message}")


def by_place(message):
    """Sort key: file, then line as a number."""
    match = re.match(r"^([^:]*):(\d+):", message)
    return (match.group(1), int(match.group(2)), message) if match else (message, 0, message)


def suggest(name, candidates):
    """The closest candidate, compared without the LETHE_ or -- that all of them share."""
    def bare(text):
        return re.sub(r"^(LETHE_|--)", "", text).lower().replace("-", "_")
    by_bare = {bare(c): c for c in candidates}
    close = difflib.get_close_matches(bare(name), list(by_bare), n=1, cutoff=0.75)
    return f"; did you mean {by_bare[close[0]]}?" if close else ""


def known_list(names):
    return ", ".join(sorted(names)) or "nothing"


def value_problem(option, value):
    """Why a value cannot be this option's, or None. Values from env files are strings."""
    if option.is_bool:
        if isinstance(value, bool) or (isinstance(value, str) and value.lower() in ("true", "false")):
            return None
        return "must be true or false"
    if option.is_list:
        if isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            return None
        return "must be a list of strings, or one comma-separated string"
    if option.default is None:
        return None
    default = option.default
    if re.fullmatch(r"-?\d+", default):
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, str) and re.fullmatch(r"-?\d+", value))):
            return f"must be an integer (default {default})"
    elif re.fullmatch(r"-?\d+\.\d*", default):
        if isinstance(value, bool) or not (isinstance(value, (int, float)) or (isinstance(value, str) and re.fullmatch(r"-?\d+(\.\d*)?", value))):
            return f"must be a number (default {default})"
    elif not isinstance(value, str):
        return f"must be a string (default {default})"
    return None


class Setting:
    """One place a deployment file sets something for a Lethe program."""

    def __init__(self, path, line, kind, name, value=None):
        self.path, self.line, self.kind, self.name, self.value = path, line, kind, name, value


class Checker:
    def __init__(self, root, binaries):
        self.root = root
        self.binaries = binaries
        self.report = Report(root)
        self.entrypoints = self._entrypoints()

    # -- which program a container runs -----------------------------------------------------

    def _entrypoints(self):
        """Image name lethe-X -> the ENTRYPOINT of deploy/docker/X.Dockerfile."""
        result = {}
        directory = os.path.join(self.root, "deploy", "docker")
        for name in sorted(os.listdir(directory)) if os.path.isdir(directory) else []:
            if name.endswith(".Dockerfile"):
                entry = self._dockerfile_entrypoint(os.path.join(directory, name))
                if entry:
                    result["lethe-" + name[: -len(".Dockerfile")]] = entry
        return result

    def _dockerfile_entrypoint(self, path):
        entry = None
        with open(path) as f:
            for line in f:
                if line.startswith("ENTRYPOINT"):
                    text = line[len("ENTRYPOINT"):].strip()
                    try:
                        entry = json.loads(text)
                    except json.JSONDecodeError:
                        entry = shlex.split(text)
        return entry

    @staticmethod
    def image_name(image):
        image = image.split("@")[0]
        last = image.rsplit("/", 1)[-1]
        return last.split(":")[0]

    def program_of(self, argv):
        """(program, subcommand, rest of argv) of a Lethe command line, or None."""
        if not argv:
            return None
        program = os.path.basename(str(argv[0]))
        if program not in PROGRAMS:
            return None
        rest = [str(a) for a in argv[1:]]
        sub = None
        if rest and not rest[0].startswith("-"):
            sub, rest = rest[0], rest[1:]
        return program, sub, rest

    # -- checking settings against an interface ---------------------------------------------

    def check_settings(self, who, interface, settings):
        """settings: Setting list for one program run. Reports each one the program lacks."""
        report = self.report
        for s in settings:
            report.checked += 1
            if s.kind == "env":
                key = s.name[len("LETHE_"):].lower()
                option = interface.options.get(key)
                if option is None:
                    report.missing.setdefault(interface.name, set()).add(key)
                    report.error(s.path, s.line, f"{who} sets {s.name}, which `{interface.name}` does not read"
                                 f"{suggest(s.name, interface.env_names())} (it reads: {known_list(interface.env_names())})")
                    continue
                if option.env is None and not interface.env_rule:
                    report.error(s.path, s.line, f"{who} sets {s.name}: `{interface.name} --help` shows the flag "
                                 f"--{option.flag} but reads no variable for it")
                elif option.env is not None and option.env != s.name:
                    report.note(s.path, s.line, f"{who} sets {s.name}, but `{interface.name} --help` names the variable of --{option.flag} {option.env}")
                if s.value is not None:
                    problem = value_problem(option, s.value)
                    if problem:
                        report.error(s.path, s.line, f"{who} sets {s.name}={s.value!r}: it {problem}")
            elif s.kind == "flag":
                key = s.name.replace("-", "_")
                if key not in interface.options:
                    report.missing.setdefault(interface.name, set()).add(key)
                    flags = ["--" + o.flag for o in interface.options.values()]
                    report.error(s.path, s.line, f"{who} passes --{s.name}, which `{interface.name}` does not take"
                                 f"{suggest('--' + s.name, flags)} (it takes: {known_list(flags)})")
            elif s.kind == "argument":
                report.error(s.path, s.line, f"{who} passes the argument {s.name!r}, which `{interface.name}` does not take")
            elif s.kind == "key":
                if s.name == "config":
                    report.error(s.path, s.line, f"{who}: `config` names the config file; it is not a key of one")
                    continue
                option = interface.options.get(s.name)
                if option is None:
                    report.missing.setdefault(interface.name, set()).add(s.name)
                    keys = interface.file_keys()
                    report.error(s.path, s.line, f"{who} has the key {s.name}, which `{interface.name}` does not read"
                                 f"{suggest(s.name, keys)} (it reads: {known_list(keys)})")
                    continue
                if s.value is not None:
                    problem = value_problem(option, s.value)
                    if problem:
                        report.error(s.path, s.line, f"{who}: {s.name} = {s.value!r}: it {problem}")
            elif s.kind == "table":
                report.error(s.path, s.line, f"{who} has the table [{s.name}]: Lethe config files have plain keys only")

    def interface_for(self, path, line, who, program, sub):
        if program == "lethe-worker" and sub is None:
            self.report.error(path, line, f"{who} runs lethe-worker without a subcommand (serve?)")
            return None
        interface = self.binaries.interface(program, sub)
        if interface.error:
            self.report.missing.setdefault(interface.name, set()).add("(the whole subcommand)")
            self.report.error(path, line, f"{who} runs `{command_name(program, sub)}`, but {interface.error}")
            return None
        return interface

    # -- TOML -----------------------------------------------------------------------------------

    def toml_settings(self, path, text, first_line, who):
        """Settings of a TOML text, commented-out assignments included, with line numbers."""
        settings = []
        try:
            values = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            self.report.error(path, first_line, f"{who} is not valid TOML: {e}")
            values = {}
        for offset, raw in enumerate(text.splitlines()):
            line = first_line + offset
            table = re.match(r"^\s*\[+\s*([^\]]+?)\s*\]+", raw)
            if table:
                settings.append(Setting(path, line, "table", table.group(1)))
                continue
            active = re.match(r"^\s*([A-Za-z0-9_-]+)\s*=", raw)
            commented = re.match(r"^\s*#\s*([a-z][a-z0-9_]*)\s*=\s*\S", raw)
            if active:
                key = active.group(1)
                value = values.get(key)
                settings.append(Setting(path, line, "key", key, None if isinstance(value, dict) else value))
            elif commented:
                settings.append(Setting(path, line, "key", commented.group(1)))
        return settings

    def env_file_settings(self, path, text):
        settings = []
        for number, raw in enumerate(text.splitlines(), 1):
            match = re.match(r"^\s*(#\s*)?(?:export\s+)?(LETHE_[A-Z0-9_]+)\s*=(.*)$", raw)
            if match:
                value = None if match.group(1) else match.group(3).strip().strip("'\"")
                settings.append(Setting(path, number, "env", match.group(2), value))
        return settings

    # -- one program run (a compose service or a container) ---------------------------------

    def check_run(self, who, path, line, argv, argv_lines, env_settings, config_resolver, grace):
        """argv: the full command line (entrypoint + command) or None when it runs no Lethe
        program. env_settings: Setting list of its LETHE_* variables (values where known).
        config_resolver(path_in_container) -> (file, first_line, text) or None.
        grace: (seconds the process gets after SIGTERM, file, line, what) or None."""
        run = self.program_of(argv) if argv else None
        if run is None:
            for s in env_settings:
                self.report.error(s.path, s.line, f"{who} sets {s.name} but runs no Lethe program"
                                  f" ({' '.join(map(str, argv)) if argv else 'no command known'})")
            return
        program, sub, rest = run
        interface = self.interface_for(path, line, who, program, sub)
        if interface is None:
            return
        settings = list(env_settings)
        # Flags and stray arguments.
        skip = False
        first_arg_index = len(argv) - len(rest)
        for index, token in enumerate(rest):
            arg_line = argv_lines[first_arg_index + index] if argv_lines else line
            if skip:
                skip = False
                continue
            if token.startswith("--"):
                name, _, inline = token[2:].partition("=")
                settings.append(Setting(path, arg_line, "flag", name))
                option = interface.options.get(name.replace("-", "_"))
                skip = bool(option and option.takes_value and not inline)
            elif token.startswith("-"):
                continue
            else:
                settings.append(Setting(path, arg_line, "argument", token))
        self.check_settings(who, interface, settings)

        # The config file it is given, checked against the same interface.
        config_path = None
        for s in env_settings:
            if s.name == "LETHE_CONFIG" and s.value:
                config_path = (s.value, s.line)
        for index, token in enumerate(rest):
            if token == "--config" and index + 1 < len(rest):
                config_path = (rest[index + 1], line)
            elif token.startswith("--config="):
                config_path = (token.split("=", 1)[1], line)
        toml_values = {}
        if config_path:
            found = config_resolver(config_path[0])
            if found is None:
                self.report.error(path, config_path[1], f"{who} reads its config from {config_path[0]}, "
                                  "which no volume or mount in this file provides")
            else:
                file, first_line, text = found
                self.toml_checked.add((file, first_line))
                file_settings = self.toml_settings(file, text, first_line, f"the config of {who}")
                self.check_settings(f"the config of {who}", interface, file_settings)
                toml_values = {s.name: s.value for s in file_settings if s.kind == "key" and s.value is not None}

        # A worker must get longer than its drain grace before it is killed.
        option = interface.options.get("drain_grace_seconds")
        if grace and option:
            drain, source = option.default, "its default"
            if "drain_grace_seconds" in toml_values:
                drain, source = toml_values["drain_grace_seconds"], "its config file"
            for s in env_settings:
                if s.name == "LETHE_DRAIN_GRACE_SECONDS" and s.value is not None:
                    drain, source = s.value, "LETHE_DRAIN_GRACE_SECONDS"
            for index, token in enumerate(rest):
                if token == "--drain-grace-seconds" and index + 1 < len(rest):
                    drain, source = rest[index + 1], "--drain-grace-seconds"
                elif token.startswith("--drain-grace-seconds="):
                    drain, source = token.split("=", 1)[1], "--drain-grace-seconds"
            seconds, grace_path, grace_line, what = grace
            try:
                drain = float(drain)
            except (TypeError, ValueError):
                drain = None
            if drain is not None and seconds is not None and seconds <= drain:
                self.report.error(grace_path, grace_line, f"{who}: {what} is {seconds:g} s, not more than "
                                  f"drain_grace_seconds ({drain:g} s, from {source}): a draining worker would be killed")

    # -- docker-compose.yml ------------------------------------------------------------------

    @staticmethod
    def duration_seconds(text):
        if text is None:
            return None
        total, matched = 0.0, False
        for number, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", str(text)):
            matched = True
            total += float(number) * {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 1e-6}[unit]
        return total if matched else None

    def check_compose(self, path):
        if not os.path.isfile(path):
            return
        with open(path) as f:
            doc = yaml.load(f, Loader=LineLoader) or {}
        base = os.path.dirname(path)
        services = doc.get("services") or {}
        for name, service in services.items():
            who = f"compose service {name}"
            line = line_of(services, name)
            # Its command line: entrypoint (own, the Dockerfile's, or the image's) + command.
            entry, entry_lines = service.get("entrypoint"), None
            if isinstance(entry, str):
                entry = shlex.split(entry)
            elif entry is not None:
                entry_lines = line_of(service, "entrypoint")
            if entry is None:
                build = service.get("build")
                if isinstance(build, dict) and build.get("dockerfile"):
                    dockerfile = os.path.join(base, build.get("context", "."), build["dockerfile"])
                    if os.path.isfile(dockerfile):
                        entry = self._dockerfile_entrypoint(dockerfile)
                elif isinstance(build, str) and os.path.isfile(os.path.join(base, build, "Dockerfile")):
                    entry = self._dockerfile_entrypoint(os.path.join(base, build, "Dockerfile"))
                if entry is None and service.get("image"):
                    entry = self.entrypoints.get(self.image_name(service["image"]))
            command = service.get("command")
            command_lines = [line_of(service, "command")] * len(command) if isinstance(command, str) else None
            if isinstance(command, str):
                command = shlex.split(command)
            elif command is not None:
                command_lines = list(getattr(command, "lines", [])) or [line_of(service, "command")] * len(command)
            argv = list(entry or []) + list(command or []) if entry else None
            argv_lines = [line] * len(entry or []) + (command_lines or []) if argv else None

            env = []
            environment = service.get("environment") or {}
            if isinstance(environment, dict):
                for key, value in environment.items():
                    if str(key).startswith("LETHE_"):
                        env.append(Setting(path, line_of(environment, key), "env", key,
                                           None if value is None else str(value).lower() if isinstance(value, bool) else str(value)))
            else:
                for index, item in enumerate(environment):
                    key, _, value = str(item).partition("=")
                    if key.startswith("LETHE_"):
                        env.append(Setting(path, line_of(environment, index), "env", key, value))
            env_files = service.get("env_file") or []
            for item in [env_files] if isinstance(env_files, str) else env_files:
                file = os.path.join(base, item if isinstance(item, str) else item.get("path", ""))
                if os.path.isfile(file):
                    with open(file) as f:
                        env += [s for s in self.env_file_settings(file, f.read()) if s.value is not None]

            def resolve(target, service=service):
                for volume in service.get("volumes") or []:
                    if isinstance(volume, str):
                        parts = volume.split(":")
                        if len(parts) < 2:
                            continue
                        source, mount = parts[0], parts[1]
                    else:
                        source, mount = volume.get("source"), volume.get("target")
                    if not source or not mount or not source.startswith((".", "/")):
                        continue
                    if target == mount or target.startswith(mount.rstrip("/") + "/"):
                        host = os.path.normpath(os.path.join(base, source, os.path.relpath(target, mount)))
                        if os.path.isfile(host):
                            with open(host) as f:
                                return host, 1, f.read()
                return None

            program = self.program_of(argv) if argv else None
            grace = None
            if program and program[0] == "lethe-worker":
                grace = (self.duration_seconds(service.get("stop_grace_period", "10s")), path,
                         line_of(service, "stop_grace_period", line), "stop_grace_period")
            self.check_run(who, path, line, argv, argv_lines, env, resolve, grace)

    # -- deploy/k8s ----------------------------------------------------------------------------

    def load_k8s(self, directory):
        objects = []
        for name in sorted(os.listdir(directory)) if os.path.isdir(directory) else []:
            if not name.endswith((".yaml", ".yml")) or name.startswith("kustomization."):
                continue
            path = os.path.join(directory, name)
            with open(path) as f:
                for doc in yaml.load_all(f, Loader=LineLoader):
                    if isinstance(doc, dict):
                        objects.append((path, doc))
        return objects

    @staticmethod
    def pod_specs(doc):
        kind, spec = doc.get("kind"), doc.get("spec") or {}
        if kind == "Pod":
            return [spec]
        if kind == "CronJob":
            spec = ((spec.get("jobTemplate") or {}).get("spec")) or {}
        template = spec.get("template") if isinstance(spec, dict) else None
        return [template.get("spec") or {}] if isinstance(template, dict) else []

    def check_k8s(self, directory):
        objects = self.load_k8s(directory)
        by_name = {(d.get("kind"), (d.get("metadata") or {}).get("name")): (p, d) for p, d in objects}
        for path, doc in objects:
            kind, name = doc.get("kind"), (doc.get("metadata") or {}).get("name")
            for pod in self.pod_specs(doc):
                containers = [("container", c) for c in pod.get("containers") or []] + \
                             [("init container", c) for c in pod.get("initContainers") or []]
                for role, container in containers:
                    who = f"{kind} {name} {role} {container.get('name')}"
                    self.check_container(who, path, pod, container, by_name)
        # ConfigMap TOML no container mounted: by the name of its key.
        for path, doc in objects:
            if doc.get("kind") != "ConfigMap":
                continue
            data = doc.get("data") or {}
            for key, text in data.items():
                if not str(key).endswith(".toml"):
                    continue
                first_line = line_of(data, key) + 1
                if (path, first_line) in self.toml_checked:
                    continue
                who = f"ConfigMap {(doc.get('metadata') or {}).get('name')} {key}"
                self.check_owned_toml(path, key, str(text), first_line, who)

    def check_container(self, who, path, pod, container, by_name):
        line = getattr(container, "line", 0)
        command, args = container.get("command"), container.get("args")
        if command is not None:
            argv = list(command) + list(args or [])
            argv_lines = list(getattr(command, "lines", [])) + list(getattr(args, "lines", [])) if args else list(getattr(command, "lines", []))
        else:
            entry = self.entrypoints.get(self.image_name(str(container.get("image", ""))))
            argv = list(entry) + list(args or []) if entry else None
            argv_lines = [line] * len(entry) + list(getattr(args, "lines", [])) if entry and args else ([line] * len(entry) if entry else None)

        env = []
        env_list = container.get("env") or []
        for index, item in enumerate(env_list):
            var = str(item.get("name", ""))
            if var.startswith("LETHE_"):
                env.append(Setting(path, getattr(item, "line", line_of(env_list, index)), "env", var,
                                   None if "value" not in item else str(item["value"])))
        for index, source in enumerate(container.get("envFrom") or []):
            prefix = source.get("prefix", "")
            for ref_kind, kind in (("configMapRef", "ConfigMap"), ("secretRef", "Secret")):
                ref = source.get(ref_kind)
                if not ref:
                    continue
                found = by_name.get((kind, ref.get("name")))
                if found is None:
                    self.report.note(path, getattr(source, "line", line), f"{who} takes variables from {kind} "
                                     f"{ref.get('name')}, which is not among the manifests: not checked")
                    continue
                ref_path, ref_doc = found
                for section in ("data", "stringData"):
                    data = ref_doc.get(section) or {}
                    for key, value in data.items():
                        var = prefix + str(key)
                        if var.startswith("LETHE_"):
                            env.append(Setting(ref_path, line_of(data, key), "env", var,
                                               str(value) if kind == "ConfigMap" else None))

        def resolve(target):
            for mount in container.get("volumeMounts") or []:
                mount_path = str(mount.get("mountPath", ""))
                sub_path = mount.get("subPath")
                if sub_path:
                    if target != mount_path:
                        continue
                    relative = sub_path
                elif target.startswith(mount_path.rstrip("/") + "/"):
                    relative = target[len(mount_path.rstrip("/")) + 1:]
                else:
                    continue
                volume = next((v for v in pod.get("volumes") or [] if v.get("name") == mount.get("name")), None)
                config_map = (volume or {}).get("configMap")
                if not config_map:
                    continue
                items = config_map.get("items")
                if items:
                    key = next((i.get("key") for i in items if i.get("path") == relative), None)
                else:
                    key = relative
                found = by_name.get(("ConfigMap", config_map.get("name")))
                if key is None or found is None:
                    continue
                cm_path, cm = found
                data = cm.get("data") or {}
                if key in data:
                    return cm_path, line_of(data, key) + 1, str(data[key])
            return None

        run = self.program_of(argv) if argv else None
        grace = None
        if run and run[0] == "lethe-worker":
            grace = (pod.get("terminationGracePeriodSeconds", 30), path,
                     line_of(pod, "terminationGracePeriodSeconds", line), "terminationGracePeriodSeconds")
        self.check_run(who, path, line, argv, argv_lines, env, resolve, grace)

    # -- deploy/config -------------------------------------------------------------------------

    def check_owned_toml(self, path, name, text, first_line, who):
        owner = [run for word, run in FILE_OWNERS if word in os.path.basename(name)]
        if len(owner) != 1:
            self.report.error(path, first_line, f"{who}: cannot tell whose config it is (its name should say "
                              "coordinator or worker), nor is it named by any container's LETHE_CONFIG")
            return
        program, sub = owner[0]
        interface = self.interface_for(path, first_line, who, program, sub)
        if interface:
            self.check_settings(who, interface, self.toml_settings(path, text, first_line, who))

    def check_config_dir(self, directory):
        for name in sorted(os.listdir(directory)) if os.path.isdir(directory) else []:
            path = os.path.join(directory, name)
            with open(path) as f:
                text = f.read()
            if name.endswith(".toml"):
                self.check_owned_toml(path, name, text, 1, name)
            elif ".env" in name:
                owner = [run for word, run in FILE_OWNERS if word in name]
                if len(owner) != 1:
                    self.report.error(path, 0, "cannot tell whose variables these are (the name should say coordinator or worker)")
                    continue
                interface = self.interface_for(path, 1, name, *owner[0])
                if interface:
                    self.check_settings(name, interface, self.env_file_settings(path, text))

    def run(self):
        self.toml_checked = set()
        self.check_compose(os.path.join(self.root, "docker-compose.yml"))
        self.check_k8s(os.path.join(self.root, "deploy", "k8s"))
        self.check_config_dir(os.path.join(self.root, "deploy", "config"))
        return self.report


# ---------------------------------------------------------------------------------------------
# The self-test: invented mistakes on a scratch copy must each be reported.

MISTAKES = [
    # (file, text to find, text to put in its place, what the new report must mention)
    ("deploy/config/coordinator.toml", "lease_seconds = 30", "lease_seconds = 30\ninvented_knob = 1", "invented_knob"),
    ("deploy/config/worker.toml", "slots = 1", "slots = 1\n# slotz = 2", "slotz"),
    ("deploy/config/coordinator.toml", "lease_seconds = 30", 'lease_seconds = "thirty"', "lease_seconds"),
    ("deploy/config/coordinator.env.example", "# LETHE_LISTEN=", "LETHE_INVENTED_PORT=1\n# LETHE_LISTEN=", "LETHE_INVENTED_PORT"),
    ("docker-compose.yml", "      LETHE_LEASE_SECONDS:", "      LETHE_LEASE_SECONDZ: \"30\"\n      LETHE_LEASE_SECONDS:", "LETHE_LEASE_SECONDZ"),
    # A coordinator setting given to a worker (the worker's metrics port makes it the worker's).
    ("docker-compose.yml", "      LETHE_METRICS_LISTEN: 0.0.0.0:9465\n", "      LETHE_METRICS_LISTEN: 0.0.0.0:9465\n      LETHE_RETRAIN_THRESHOLD: \"0.1\"\n", "LETHE_RETRAIN_THRESHOLD"),
    ("docker-compose.yml", "    stop_grace_period: 60s", "    stop_grace_period: 5s", "stop_grace_period"),
    ("deploy/k8s/worker.yaml", "          image: lethe-worker\n", "          image: lethe-worker\n          args: [\"--invented-flag\"]\n", "--invented-flag"),
    ("deploy/k8s/configmap.yaml", "    slots = 1\n", "    slots = 1\n    invented_key = true\n", "invented_key"),
    ("deploy/k8s/worker.yaml", "terminationGracePeriodSeconds: 90", "terminationGracePeriodSeconds: 20", "terminationGracePeriodSeconds"),
]


def self_test(root, binaries):
    scratch = tempfile.mkdtemp(prefix="check-deploy-")
    failures = []
    try:
        for item in ("docker-compose.yml", "deploy"):
            source = os.path.join(root, item)
            if os.path.isdir(source):
                shutil.copytree(source, os.path.join(scratch, item))
            elif os.path.isfile(source):
                shutil.copy(source, os.path.join(scratch, item))
        baseline = set(Checker(scratch, binaries).run().errors)
        for file, find, replace, mention in MISTAKES:
            path = os.path.join(scratch, file)
            with open(path) as f:
                original = f.read()
            if find not in original:
                failures.append(f"self-test: {file} no longer contains {find!r}: update MISTAKES")
                continue
            with open(path, "w") as f:
                f.write(original.replace(find, replace, 1))
            try:
                new = [e for e in Checker(scratch, binaries).run().errors if e not in baseline]
            finally:
                with open(path, "w") as f:
                    f.write(original)
            if not any(mention in e for e in new):
                failures.append(f"self-test: writing {replace!r} into {file} was not reported as a problem "
                                f"mentioning {mention!r} (new reports: {new or 'none'})")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return failures


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    parser.add_argument("--bin-dir", default=os.environ.get("LETHE_BIN_DIR", "target/debug"))
    parser.add_argument("--no-self-test", action="store_true")
    parser.add_argument("--self-test-only", action="store_true")
    options = parser.parse_args()
    root = os.path.abspath(options.root)
    bin_dir = os.path.abspath(os.path.join(root, options.bin_dir)) if not os.path.isabs(options.bin_dir) else options.bin_dir
    for program in PROGRAMS:
        if not os.access(os.path.join(bin_dir, program), os.X_OK):
            print(f"check-deploy: {os.path.join(bin_dir, program)} is not built", file=sys.stderr)
            return 1
    binaries = Binaries(bin_dir)

    status = 0
    if not options.no_self_test:
        failures = self_test(root, binaries)
        for failure in failures:
            print(f"check-deploy: {failure}", file=sys.stderr)
        if failures:
            status = 1
        else:
            print(f"check-deploy: self-test: each of {len(MISTAKES)} invented mistakes on a scratch copy is reported")
    if options.self_test_only:
        return status

    report = Checker(root, binaries).run()
    for note in sorted(set(report.notes), key=by_place):
        print(f"check-deploy: note: {note}")
    for error in sorted(set(report.errors), key=by_place):
        print(f"check-deploy: {error}", file=sys.stderr)
    if report.errors:
        for name, keys in sorted(report.missing.items()):
            print(f"check-deploy: `{name}` lacks: {', '.join(sorted(keys))}", file=sys.stderr)
        print(f"check-deploy: {len(set(report.errors))} problems in {report.checked} settings checked", file=sys.stderr)
        status = 1
    else:
        print(f"check-deploy: all {report.checked} settings in docker-compose.yml, deploy/k8s and deploy/config "
              "are read by the binaries that get them")
    return status


if __name__ == "__main__":
    sys.exit(main())
