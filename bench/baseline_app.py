"""The floor for figure 2: the protocol's routes doing the manager's filesystem calls and nothing
else, served by uvicorn exactly as ``bcmanager serve`` serves (same loop, same HTTP parser, no
access log). No state but a counter of raw file names and, per job, the engine it went to (its
folder names need it); no validation, no lease, no recovery.

The calls per route mirror folders.py one for one:

- /assignwork: mkdir of the hidden job folder, one symlink per file, mkdir of TMPOUTPUT_, an
  existence check and the rename of the job folder into place (``RunFolders.build_job``).
- /keepalive: none.
- /completed (DONE): existence check and rename of ASSIGNED_ to DONE_; then a stat of TMPOUTPUT_,
  for pass/ and fail/ a stat and a listing, and per FASTQ an existence check and a rename into
  OUTPUT_DIR/pass|fail; then the check and rename of TMPOUTPUT_ to LOGOUTPUT_
  (``RunFolders.commit_done`` and ``roll_forward``).

Run as ``python bench/baseline_app.py starlette|fastapi INPUT_DIR OUTPUT_DIR PORT``: Starlette is
the floor; the FastAPI variant shows what the framework bcmanager is built on costs by itself.
"""

from __future__ import annotations

import itertools
import os
import sys
from pathlib import Path
from typing import Any

import uvicorn
from _common import HOST
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from bcmanager.paths import (
    FAIL,
    PASS,
    FolderKind,
    RunPaths,
    final_fastq_name,
    job_folder,
    temp_name,
)
from bcmanager.sim.sequencer import RunIdentity

REPORT_BACK = 90


def _rename_new(source: Path, destination: Path) -> None:
    if os.path.lexists(destination):
        raise FileExistsError(destination)
    os.rename(source, destination)


class BareRoutes:
    """What the three routes do: the manager's filesystem calls and nothing else."""

    def __init__(self, paths: RunPaths) -> None:
        self.paths = paths
        self.identity = RunIdentity.from_seed(0)
        self.next_file = itertools.count()
        self.next_job = itertools.count(1)
        self.engines: dict[str, str] = {}

    def assignwork(self, engine: str, size: int) -> dict[str, Any]:
        paths = self.paths
        jobid = str(next(self.next_job))
        files = [self.identity.raw_file_name(next(self.next_file)) for _ in range(size)]
        final = paths.input_folder(FolderKind.ASSIGNED, jobid, engine)
        building = final.with_name(temp_name(final.name))
        os.mkdir(building)
        for name in files:
            os.symlink(os.path.join(os.pardir, name), building / name)
        os.mkdir(paths.output_folder(FolderKind.TMPOUTPUT, jobid, engine))
        _rename_new(building, final)
        self.engines[jobid] = engine
        return {
            "report_back_period": REPORT_BACK,
            "report_back_interval": REPORT_BACK,
            "jobid": jobid,
            "job_input_dir": final.name,
            "job_output_dir": job_folder(FolderKind.TMPOUTPUT, jobid, engine),
            "bc_engine_id": engine,
            "batch_size": len(files),
            "batch": files,
            "input_dir": str(paths.input_dir),
            "output_dir": str(paths.output_dir),
        }

    def completed(self, jobid: str) -> dict[str, Any]:
        paths = self.paths
        engine = self.engines.pop(jobid)
        assigned = paths.input_folder(FolderKind.ASSIGNED, jobid, engine)
        _rename_new(assigned, assigned.with_name(job_folder(FolderKind.DONE, jobid, engine)))
        output = paths.output_folder(FolderKind.TMPOUTPUT, jobid, engine)
        if output.is_dir():
            for sub, target_dir in ((PASS, paths.pass_dir), (FAIL, paths.fail_dir)):
                source_dir = output / sub
                if not source_dir.is_dir():
                    continue
                with os.scandir(source_dir) as entries:
                    names = [entry.name for entry in entries]
                for name in names:
                    _rename_new(source_dir / name, target_dir / final_fastq_name(jobid, name))
            _rename_new(output, paths.output_folder(FolderKind.LOGOUTPUT, jobid, engine))
        return {"ok": True}


def starlette_app(routes: BareRoutes) -> Starlette:
    """The floor: Starlette routes reading the query string by hand."""

    async def assignwork(request: Request) -> JSONResponse:
        query = request.query_params
        return JSONResponse(routes.assignwork(query["engineid"], int(query["batchsize"])))

    async def keepalive(request: Request) -> JSONResponse:
        return JSONResponse({"late": False})

    async def completed(request: Request) -> JSONResponse:
        return JSONResponse(routes.completed(request.query_params["job_id"]))

    return Starlette(
        routes=[
            Route("/assignwork", assignwork),
            Route("/keepalive", keepalive),
            Route("/completed", completed),
        ]
    )


def fastapi_app(routes: BareRoutes) -> FastAPI:
    """The same on FastAPI, bcmanager's framework: typed query parameters, dicts returned. It
    shows how much of bcmanager's cost over the floor is the framework's."""
    app = FastAPI()

    @app.get("/assignwork")
    async def assignwork(engineid: str, batchsize: int) -> dict[str, Any]:
        return routes.assignwork(engineid, batchsize)

    @app.get("/keepalive")
    async def keepalive(job_id: str, job_state: str) -> dict[str, Any]:
        return {"late": False}

    @app.get("/completed")
    async def completed(job_id: str, job_state: str) -> dict[str, Any]:
        return routes.completed(job_id)

    return app


FRAMEWORKS = {"starlette": starlette_app, "fastapi": fastapi_app}


def main() -> None:
    framework, input_dir, output_dir, port = sys.argv[1:5]
    routes = BareRoutes(RunPaths(Path(input_dir), Path(output_dir)))
    app = FRAMEWORKS[framework](routes)
    uvicorn.run(app, host=HOST, port=int(port), log_level="info", access_log=False)


if __name__ == "__main__":
    main()
