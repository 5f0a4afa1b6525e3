"""The settings of `unet-keras serve`, spelled as tensorflow_model_server's flags, and
the flags of tensorflow_model_server it does not take. TF-free."""

from __future__ import annotations

import dataclasses

from unet_keras.settings import Settings, at_least, setting

# TF Serving's message limit in both directions (ServerBuilder::SetMaxMessageSize(INT32_MAX)).
MAX_MESSAGE_BYTES = 2**31 - 1


@dataclasses.dataclass(frozen=True)
class ServeConfig(Settings):
    """`unet-keras serve`: a local server with TensorFlow Serving's gRPC and REST APIs. It takes
    tensorflow_model_server's flags as spelled there (--model_base_path=B), with the same
    meanings; each flag also takes hyphens (--model-base-path B). docs/serving.md says
    what each does, and what differs from TensorFlow Serving."""

    # Models and their versions.
    model_base_path: str | None = setting(None, help="one model's numbered versions: BASE/1/...")
    model_name: str = setting("unet", help="the name requests give in their model spec")
    model_config_file: str | None = setting(None, help="a text ModelServerConfig: several models")
    model_config_file_poll_wait_seconds: float = setting(0.0, help="re-read it (0: once)")
    file_system_poll_wait_seconds: float = setting(
        1.0, help="look for new versions (0: once)", aliases=("--poll-seconds",)
    )
    allow_version_labels_for_unavailable_models: bool = setting(
        False, help="new labels may name versions not yet AVAILABLE"
    )
    max_num_load_retries: int = setting(5, help="tries after a failed load (LOADING meanwhile)")
    load_retry_interval_micros: int = setting(60_000_000, help="between those tries")
    enable_model_warmup: bool = setting(True, help="replay a version's warmup requests")
    # The gRPC port.
    port: int = setting(8500, help="gRPC port (0: any free port)")
    grpc_max_threads: int = setting(16, help="gRPC calls run at once", aliases=("--threads",))
    grpc_channel_arguments: str = setting("", help="gRPC server arguments: KEY=VALUE,...")
    enable_grpc_healthcheck_service: bool = setting(True, help="grpc.health.v1, per model too")
    # The REST port.
    rest_api_port: int = setting(8501, help="REST API port (0: no REST API)")
    rest_api_num_threads: int | None = setting(None, help="REST calls run at once (gRPC's)")
    rest_api_timeout_in_ms: int = setting(30_000, help="REST predict runs cut: 504 (0: none)")
    rest_api_enable_cors_support: bool = setting(False, help="TF Serving's CORS headers")
    rest_body_timeout_seconds: float = setting(30.0, help="REST bodies arrive within (else 408)")
    rest_idle_timeout_seconds: float = setting(15.0, help="idle REST connections close after")
    monitoring_config_file: str | None = setting(None, help="a text MonitoringConfig: Prometheus")
    # Both ports.
    host: str = setting("127.0.0.1", help="address to listen on; 0.0.0.0 for every interface")
    ssl_config_file: str | None = setting(None, help="a text SSLConfig: TLS on both ports")
    tls_cert: str | None = setting(None, help="PEM certificate chain: serve over TLS")
    tls_key: str | None = setting(None, help="PEM private key of --tls-cert")
    tls_client_ca: str | None = setting(None, help="PEM CA certificates clients' must be from")
    max_message_bytes: int = setting(MAX_MESSAGE_BYTES, help="largest message (REST body too)")
    max_concurrent_requests: int = setting(32, help="calls in progress per port; more: 429")
    max_request_batch: int = setting(64, help="images a request may carry; more: refused")
    grace_seconds: float = setting(30.0, help="after SIGTERM, for calls in flight; then cut")
    # The graphs' sessions.
    tensorflow_session_parallelism: int = setting(0, help="both pools' threads (0: TF's)")
    tensorflow_intra_op_parallelism: int = setting(0, help="intra-op threads (0: TF's)")
    tensorflow_inter_op_parallelism: int = setting(0, help="inter-op threads (0: TF's)")
    # Not offered: requests carry whole images of any size, which the export tiles itself.
    enable_batching: bool = setting(False, help="server-side batching: not offered")
    batching_parameters_file: str | None = setting(None, help="for --enable_batching")

    def check(self) -> None:
        at_least(self, 0, "port", "rest_api_port", "grace_seconds", "max_num_load_retries")
        at_least(self, 0, "model_config_file_poll_wait_seconds", "file_system_poll_wait_seconds")
        at_least(self, 0, "rest_api_timeout_in_ms", "load_retry_interval_micros")
        at_least(self, 0, "tensorflow_session_parallelism", "tensorflow_intra_op_parallelism")
        at_least(self, 0, "tensorflow_inter_op_parallelism")
        at_least(self, 1, "max_message_bytes", "grpc_max_threads", "max_concurrent_requests")
        at_least(self, 1, "rest_api_num_threads", "max_request_batch")
        for name in ("rest_body_timeout_seconds", "rest_idle_timeout_seconds"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be above 0, got {getattr(self, name)}")
        if (self.model_base_path is None) == (self.model_config_file is None):
            raise ValueError(
                "give --model_base_path (one model) or --model_config_file (several), not both"
                if self.model_base_path
                else "give --model_base_path (one model) or --model_config_file (several)"
            )
        if self.enable_batching or self.batching_parameters_file is not None:
            raise ValueError(
                "--enable_batching and --batching_parameters_file: unet-keras serve offers no "
                "server-side batching (requests carry whole images of any size, which the "
                "export tiles itself); serve without them, or use tensorflow_model_server"
            )
        if self.tensorflow_session_parallelism and (
            self.tensorflow_intra_op_parallelism or self.tensorflow_inter_op_parallelism
        ):
            raise ValueError(
                "give --tensorflow_session_parallelism or --tensorflow_intra_op_parallelism and "
                "--tensorflow_inter_op_parallelism, not both (as tensorflow_model_server)"
            )
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: give both or neither")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("tls_client_ca needs tls_cert and tls_key: mutual TLS is TLS too")
        if self.ssl_config_file is not None and self.tls_cert is not None:
            raise ValueError("give --ssl_config_file or --tls-cert and --tls-key, not both")


# tensorflow_model_server's flags (main.cc, 2.20) that `unet-keras serve` does not take, and
# why: each is refused by name rather than accepted and ignored.
UNSUPPORTED_SERVER_FLAGS = {
    "grpc_socket_path": "gRPC on a UNIX socket",
    "enable_per_model_batching_parameters": "server-side batching",
    "num_load_threads": "parallel loads (versions load one at a time)",
    "num_unload_threads": "parallel unloads",
    "flush_filesystem_caches": "file system cache flushing",
    "tensorflow_session_config_file": "a session ConfigProto (the parallelism flags are taken)",
    "use_alts_credentials": "ALTS credentials (--ssl_config_file is taken)",
    "platform_config_file": "platform configs",
    "per_process_gpu_memory_fraction": "GPU memory fractions",
    "saved_model_tags": "tags other than 'serve'",
    "num_request_iterations_for_warmup": "repeated warmup",
    "version": "--version (pip show unet-keras)",
    "remove_unused_fields_from_bundle_metagraph": "MetaGraphDef trimming",
    "prefer_tflite_model": "TensorFlow Lite models",
    "num_tflite_pools": "TensorFlow Lite models",
    "num_tflite_interpreters_per_pool": "TensorFlow Lite models",
    "enable_signature_method_name_check": "signature method name checks",
    "xla_cpu_compilation_enabled": "XLA compilation",
    "xla_gpu_compilation_enabled": "XLA compilation",
    "enable_profiler": "the profiler service",
    "thread_pool_factory_config_file": "thread pool factories",
    "mixed_precision": "serving-time mixed precision",
    "skip_initialize_tpu": "TPUs",
    "enable_serialization_as_tensor_content": "outputs in tensor_content",
}
