"""A thin CRI client with kubelet-like request builders, for the fault, soak and bench suites.

It speaks to any CRI endpoint (pycri, containerd, CRI-O) through the generated stubs only.
"""

from __future__ import annotations

import uuid

import grpc
from cri.api.v1 import api_pb2, api_pb2_grpc


def pod_config(name: str, namespace: str = "pycri-test", uid: str | None = None, attempt: int = 0,
               log_directory: str = "", **linux) -> api_pb2.PodSandboxConfig:
    """A PodSandboxConfig as kubelet sends it for a plain pod."""
    return api_pb2.PodSandboxConfig(
        metadata=api_pb2.PodSandboxMetadata(name=name, namespace=namespace, uid=uid or uuid.uuid4().hex,
                                            attempt=attempt),
        hostname=name[:63],
        log_directory=log_directory,
        labels={"app": name},
        linux=api_pb2.LinuxPodSandboxConfig(**linux),
    )


def container_config(name: str, image: str, command: list[str] | None = None, args: list[str] | None = None,
                     log_path: str = "", **fields) -> api_pb2.ContainerConfig:
    return api_pb2.ContainerConfig(
        metadata=api_pb2.ContainerMetadata(name=name),
        image=api_pb2.ImageSpec(image=image),
        command=command or [],
        args=args or [],
        log_path=log_path,
        labels={"container": name},
        **fields,
    )


class Client:
    """Runtime and image stubs over one channel, with the lifecycle steps kubelet performs."""

    def __init__(self, endpoint: str, timeout: float = 120.0):
        self.channel = grpc.insecure_channel(endpoint)
        self.runtime = api_pb2_grpc.RuntimeServiceStub(self.channel)
        self.images = api_pb2_grpc.ImageServiceStub(self.channel)
        self.timeout = timeout

    def close(self) -> None:
        self.channel.close()

    def pull(self, image: str) -> str:
        req = api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=image))
        return self.images.PullImage(req, timeout=self.timeout).image_ref

    def run_pod(self, config: api_pb2.PodSandboxConfig, handler: str = "") -> str:
        req = api_pb2.RunPodSandboxRequest(config=config, runtime_handler=handler)
        return self.runtime.RunPodSandbox(req, timeout=self.timeout).pod_sandbox_id

    def create(self, pod_id: str, config: api_pb2.ContainerConfig, pod: api_pb2.PodSandboxConfig) -> str:
        req = api_pb2.CreateContainerRequest(pod_sandbox_id=pod_id, config=config, sandbox_config=pod)
        return self.runtime.CreateContainer(req, timeout=self.timeout).container_id

    def start(self, container_id: str) -> None:
        self.runtime.StartContainer(api_pb2.StartContainerRequest(container_id=container_id), timeout=self.timeout)

    def stop(self, container_id: str, grace: int = 10) -> None:
        self.runtime.StopContainer(api_pb2.StopContainerRequest(container_id=container_id, timeout=grace),
                                   timeout=self.timeout)

    def remove(self, container_id: str) -> None:
        self.runtime.RemoveContainer(api_pb2.RemoveContainerRequest(container_id=container_id), timeout=self.timeout)

    def stop_pod(self, pod_id: str) -> None:
        self.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=self.timeout)

    def remove_pod(self, pod_id: str) -> None:
        self.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=self.timeout)

    def container_state(self, container_id: str) -> int:
        req = api_pb2.ContainerStatusRequest(container_id=container_id)
        return self.runtime.ContainerStatus(req, timeout=self.timeout).status.state

    def pod_state(self, pod_id: str) -> int:
        req = api_pb2.PodSandboxStatusRequest(pod_sandbox_id=pod_id)
        return self.runtime.PodSandboxStatus(req, timeout=self.timeout).status.state

    def remove_everything(self) -> None:
        try:
            containers = self.runtime.ListContainers(api_pb2.ListContainersRequest(), timeout=self.timeout).containers
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.UNIMPLEMENTED:
                raise
            containers = []
        for c in containers:
            self.remove(c.id)
        for s in self.runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest(), timeout=self.timeout).items:
            self.stop_pod(s.id)
            self.remove_pod(s.id)
