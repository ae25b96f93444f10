"""Checks the TF Serving deployment files in deploy/ without TF Serving.

  python deploy/check_configs.py [DIR]     (DIR defaults to this file's directory)

Parses each config with TF Serving's own message types:
  models.config      ModelServerConfig   tensorflow_serving.config.model_server_config_pb2
  monitoring.config  MonitoringConfig    tensorflow_serving.config.monitoring_config_pb2
  batching.config    BatchingParameters  tensorflow_serving.servables.tensorflow.session_bundle_config_pb2
tensorflow-serving-api (2.20) ships only the first module. When the other two
cannot be imported, their messages are rebuilt here from the field names and
types of TF Serving's monitoring_config.proto and session_bundle_config.proto
(the fields listed in _FALLBACK_FIELDS; a newer field would be reported as
unknown), and the output says so.

Also checks what parsing cannot: version labels point at served versions,
Prometheus is on, batching pads variable-length inputs; and, if PyYAML is
installed, that docker-compose.yml parses and mounts every file its flags name.
Exits 1 listing every problem found.
"""

import os
import sys

from google.protobuf import text_format

_FALLBACK_FIELDS = {  # message -> [(field, number, type, repeated)], as in TF Serving's .proto files
    "PrometheusConfig": [("enable", 1, "bool", False), ("path", 2, "string", False)],
    "MonitoringConfig": [("prometheus_config", 1, ".tensorflow.serving.PrometheusConfig", False)],
    "BatchingParameters": [
        ("max_batch_size", 1, ".google.protobuf.Int64Value", False),
        ("batch_timeout_micros", 2, ".google.protobuf.Int64Value", False),
        ("max_enqueued_batches", 3, ".google.protobuf.Int64Value", False),
        ("num_batch_threads", 4, ".google.protobuf.Int64Value", False),
        ("thread_pool_name", 5, ".google.protobuf.StringValue", False),
        ("allowed_batch_sizes", 6, "int64", True),
        ("pad_variable_length_inputs", 7, "bool", False)],
}


def _fallback_class(name: str):
  """The message class for tensorflow.serving.<name> built from _FALLBACK_FIELDS."""
  from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, wrappers_pb2
  F = descriptor_pb2.FieldDescriptorProto
  scalar = {"bool": F.TYPE_BOOL, "string": F.TYPE_STRING, "int64": F.TYPE_INT64}
  pool = descriptor_pool.DescriptorPool()
  wrappers = descriptor_pb2.FileDescriptorProto()
  wrappers_pb2.DESCRIPTOR.CopyToProto(wrappers)
  pool.Add(wrappers)
  file = descriptor_pb2.FileDescriptorProto(
      name="deploy/tf_serving_fallback.proto", package="tensorflow.serving", syntax="proto3",
      dependency=["google/protobuf/wrappers.proto"])
  for message, fields in _FALLBACK_FIELDS.items():
    proto = file.message_type.add(name=message)
    for field, number, kind, repeated in fields:
      f = proto.field.add(name=field, number=number,
                          label=F.LABEL_REPEATED if repeated else F.LABEL_OPTIONAL)
      if kind in scalar:
        f.type = scalar[kind]
      else:
        f.type, f.type_name = F.TYPE_MESSAGE, kind
  pool.Add(file)
  return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"tensorflow.serving.{name}"))


def message_class(name: str):
  """(class, where it came from) for ModelServerConfig, MonitoringConfig or BatchingParameters."""
  if name == "ModelServerConfig":
    from tensorflow_serving.config import model_server_config_pb2 as module
  else:
    try:
      if name == "MonitoringConfig":
        from tensorflow_serving.config import monitoring_config_pb2 as module
      else:
        from tensorflow_serving.servables.tensorflow import session_bundle_config_pb2 as module
    except ImportError:
      return _fallback_class(name), "fields transcribed in check_configs.py (module not shipped)"
  return getattr(module, name), module.__name__


def check_models(config) -> list:
  problems = []
  for model in config.model_config_list.config:
    where = f"model {model.name or '(no name)'}"
    if not model.name or not model.base_path:
      problems.append(f"{where}: name and base_path are required")
    if model.model_platform != "tensorflow":
      problems.append(f"{where}: model_platform must be \"tensorflow\"")
    policy = model.model_version_policy
    if policy.WhichOneof("policy_choice") == "specific":
      served = set(policy.specific.versions)
      for label, version in model.version_labels.items():
        if version not in served:
          problems.append(f"{where}: label {label} -> version {version}, not in {sorted(served)}")
  if not config.model_config_list.config:
    problems.append("no model in model_config_list")
  return problems


def check_monitoring(config) -> list:
  if not (config.prometheus_config.enable and config.prometheus_config.path):
    return ["prometheus_config needs enable: true and a path"]
  return []


def check_batching(config) -> list:
  problems = []
  if not config.pad_variable_length_inputs:
    problems.append("pad_variable_length_inputs must be true: histories differ in length")
  if not config.HasField("max_batch_size"):
    problems.append("max_batch_size is not set")
  return problems


CONFIGS = {"models.config": ("ModelServerConfig", check_models),
           "monitoring.config": ("MonitoringConfig", check_monitoring),
           "batching.config": ("BatchingParameters", check_batching)}


def parse(path: str, message: str):
  cls, source = message_class(message)
  config = cls()
  with open(path) as f:
    text_format.Parse(f.read(), config)
  return config, source


def check_config_files(directory: str):
  """Yields (path, problems, summary) for every *.config under directory, and each one missing."""
  for name in sorted(CONFIGS):
    if not os.path.isfile(os.path.join(directory, name)):
      yield os.path.join(directory, name), ["missing"], ""
  for root, _, files in sorted(os.walk(directory)):
    for name in sorted(files):
      if not name.endswith(".config"):
        continue
      path = os.path.join(root, name)
      if name not in CONFIGS:
        yield path, [f"unknown config file name (expected one of {sorted(CONFIGS)})"], ""
        continue
      message, check = CONFIGS[name]
      try:
        config, source = parse(path, message)
      except text_format.ParseError as e:
        yield path, [f"does not parse as {message}: {e}"], ""
        continue
      yield path, check(config), f"{message} from {source}"


def check_compose(path: str, base_paths) -> list:
  """docker-compose.yml parses; every file its flags name, and every model base_path, is mounted."""
  import yaml
  with open(path) as f:
    compose = yaml.safe_load(f)
  problems, host_ports = [], []
  services = compose.get("services") or {}
  if not services:
    return ["no services"]
  for name, service in services.items():
    mounts = {}
    for volume in service.get("volumes", []):
      spec = volume[:-3] if volume.endswith((":ro", ":rw")) else volume
      source, target = spec.rsplit(":", 1)
      mounts[target] = source
    flags = dict(arg.split("=", 1) for arg in service.get("command", []) if "=" in arg)
    for flag in ("--model_config_file", "--monitoring_config_file", "--batching_parameters_file"):
      target = flags.get(flag)
      if target is None:
        problems.append(f"service {name}: no {flag}")
      elif target not in mounts:
        problems.append(f"service {name}: {flag}={target} is not a mount target")
      elif not os.path.isfile(os.path.join(os.path.dirname(path), mounts[target])):
        problems.append(f"service {name}: {mounts[target]} (mounted at {target}) does not exist")
    for base_path in base_paths:
      if base_path not in mounts:
        problems.append(f"service {name}: model base_path {base_path} is not a mount target")
    if flags.get("--enable_batching") != "true":
      problems.append(f"service {name}: --enable_batching=true is missing")
    host_ports += [str(p).split(":")[0] for p in service.get("ports", [])]
  duplicates = sorted({p for p in host_ports if host_ports.count(p) > 1})
  if duplicates:
    problems.append(f"host ports used twice: {duplicates}")
  return problems


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  directory = argv[0] if argv else os.path.dirname(os.path.abspath(__file__))
  failed, seen = [], 0
  for path, problems, summary in check_config_files(directory):
    seen += 1
    rel = os.path.relpath(path, directory)
    if problems:
      failed += [f"{rel}: {p}" for p in problems]
    else:
      print(f"ok    {rel}  ({summary})")
  if not seen:
    failed.append(f"no *.config file under {directory}")
  compose = os.path.join(directory, "docker-compose.yml")
  if os.path.exists(compose):
    try:
      import yaml  # noqa: F401
    except ImportError:
      print("skip  docker-compose.yml  (PyYAML is not installed)")
    else:
      try:
        models = parse(os.path.join(directory, "models.config"), "ModelServerConfig")[0]
        base_paths = [m.base_path for m in models.model_config_list.config]
      except (OSError, text_format.ParseError):
        base_paths = []  # Reported above.
      try:
        problems = check_compose(compose, base_paths)
      except (yaml.YAMLError, AttributeError, TypeError, ValueError) as e:
        problems = [f"malformed: {e}"]
      failed += [f"docker-compose.yml: {p}" for p in problems]
      if not problems:
        print("ok    docker-compose.yml  (YAML; mounts the configs and model base_paths)")
  for line in failed:
    print(f"FAIL  {line}", file=sys.stderr)
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
