"""TrainerService: thin gRPC edge of the coordinator (validate, convert, delegate)."""

from __future__ import annotations

import math

import grpc
from mlmesh.errors import grpc_errors, require
from mlmesh.trainer.v1 import trainer_pb2, trainer_pb2_grpc

from trainer_svc import convert
from trainer_svc.core.coordinator import Coordinator

SERVICE_NAME = trainer_pb2.DESCRIPTOR.services_by_name["TrainerService"].full_name
MAX_WORKER_ID = 256


class TrainerServicer(trainer_pb2_grpc.TrainerServiceServicer):
    def __init__(self, coordinator: Coordinator) -> None:
        self.coordinator = coordinator

    @grpc_errors
    async def CreateJob(
        self, request: trainer_pb2.CreateJobRequest, context: grpc.aio.ServicerContext
    ) -> trainer_pb2.CreateJobResponse:
        require(request.HasField("spec"), "spec is required")
        job = await self.coordinator.create_job(convert.spec_from_proto(request.spec), request.job_id)
        return trainer_pb2.CreateJobResponse(job=convert.job_to_proto(job))

    @grpc_errors
    async def GetJob(
        self, request: trainer_pb2.GetJobRequest, context: grpc.aio.ServicerContext
    ) -> trainer_pb2.GetJobResponse:
        require(bool(request.job_id), "job_id is required")
        return trainer_pb2.GetJobResponse(job=convert.job_to_proto(self.coordinator.get_job(request.job_id)))

    @grpc_errors
    async def ListJobs(
        self, request: trainer_pb2.ListJobsRequest, context: grpc.aio.ServicerContext
    ) -> trainer_pb2.ListJobsResponse:
        return trainer_pb2.ListJobsResponse(
            jobs=[convert.job_to_proto(j) for j in self.coordinator.list_jobs()]
        )

    @grpc_errors
    async def CancelJob(
        self, request: trainer_pb2.CancelJobRequest, context: grpc.aio.ServicerContext
    ) -> trainer_pb2.CancelJobResponse:
        require(bool(request.job_id), "job_id is required")
        return trainer_pb2.CancelJobResponse(
            job=convert.job_to_proto(self.coordinator.cancel_job(request.job_id))
        )

    @grpc_errors
    async def AcquireWork(
        self, request: trainer_pb2.AcquireWorkRequest, context: grpc.aio.ServicerContext
    ) -> trainer_pb2.AcquireWorkResponse:
        _check_worker_id(request.worker_id)
        job = self.coordinator.acquire_work(request.worker_id, request.device)
        if job is None:
            return trainer_pb2.AcquireWorkResponse(has_work=False)
        config = self.coordinator.config
        return trainer_pb2.AcquireWorkResponse(
            has_work=True,
            job_id=job.job_id,
            spec=convert.spec_to_proto(job.spec),
            ingest_addr=config.ingest_addr,
            ps_addrs=list(config.ps_addrs),
        )

    @grpc_errors
    async def ReportProgress(
        self, request: trainer_pb2.ReportProgressRequest, context: grpc.aio.ServicerContext
    ) -> trainer_pb2.ReportProgressResponse:
        require(bool(request.job_id), "job_id is required")
        _check_worker_id(request.worker_id)
        require(request.steps >= 0, f"steps must be >= 0, got {request.steps}")
        require(request.examples >= 0, f"examples must be >= 0, got {request.examples}")
        require(math.isfinite(request.loss_sum), f"loss_sum must be finite, got {request.loss_sum}")
        state = self.coordinator.report_progress(
            request.job_id, request.worker_id, request.steps, request.examples, request.loss_sum
        )
        return trainer_pb2.ReportProgressResponse(state=convert.state_to_proto(state))


def _check_worker_id(worker_id: str) -> None:
    require(bool(worker_id), "worker_id is required")
    require(
        len(worker_id) <= MAX_WORKER_ID,
        f"worker_id is {len(worker_id)} characters long; at most {MAX_WORKER_ID} allowed",
    )
