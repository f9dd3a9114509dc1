"""Recording consent: the control plane's side of recording a consultation (docs/recording.md).

A room's policy (`ConsultationOptions.recording`):
- `none` (the default): nothing is recorded; `record` is refused.
- `consent`: a doctor asks (`record {action: "start"}`); every admitted patient gets
  `record-consent {recording_id}` and answers `consent {recording_id, accept}`; the media plane
  records once every admitted patient accepted. A patient who withdraws (`consent accept:
  false`), a doctor's `record {action: "stop"}`, or a patient admitted meanwhile (who has not
  consented) stops it at once.
- `devices`: device streams (stethoscope, exam camera) are recorded from the room's start;
  `record` is refused (there is one recording per room).

Every step goes to the audit log (who: participant id and role; when; what), which is part of
the recording (its event log). Everyone admitted gets `recording {state, reason}` events.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import secrets
import time
from typing import TYPE_CHECKING, Any

from mediaserver.api import (
    DEVICE_SOURCES,
    MediaPlaneError,
    RecordingNote,
    RecordingStopped,
    Role,
    StartRecording,
    StopRecording,
)

from .protocol import ErrorCode, ProtocolError
from .session import Session

if TYPE_CHECKING:
    from .consultation import Consultation

logger = logging.getLogger(__name__)

POLICIES = ("none", "consent", "devices")


class State(enum.Enum):
    IDLE = "idle"
    ASKING = "asking"  # waiting for every patient's consent
    STARTING = "starting"
    RUNNING = "running"


class RecordingConsent:
    """One consultation's recording: its consent state machine and audit log."""

    def __init__(self, consultation: Consultation) -> None:
        self.consultation = consultation
        self.state = State.IDLE
        self.recording_id = ""
        self.accepted: set[str] = set()
        self.audit: list[dict[str, Any]] = []  # the current recording's steps
        # Notes and the stop go to the media plane in order, one after the other.
        self._last: asyncio.Task[None] | None = None

    @property
    def policy(self) -> str:
        return self.consultation.options.recording

    # -- audit ---------------------------------------------------------------------------

    def _step(self, who: Session | None, what: str, **extra: Any) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "time": time.time(),
            "who": who.id if who is not None else "server",
            "role": who.role.value if who is not None else "server",
            "what": what,
            "recording_id": self.recording_id,
            **extra,
        }
        self.audit.append(entry)
        logger.info(
            "room %s recording %s: %s by %s",
            self.consultation.id,
            self.recording_id,
            what,
            entry["who"],
        )
        if self.state is State.RUNNING:
            self._note("consent", entry)
        return entry

    def _note(self, kind: str, data: dict[str, Any]) -> None:
        c = self.consultation
        cmd = RecordingNote(room_id=c.id, recording_id=self.recording_id, kind=kind, data=data)
        self._send(cmd)

    def _send(self, cmd: RecordingNote | StopRecording) -> asyncio.Task[None]:
        """Run a command after the ones sent before it (notes reach the log before the stop)."""
        task = self.consultation.hub.spawn(self._after(self._last, cmd))
        self._last = task
        return task

    async def _after(self, previous: asyncio.Task[None] | None, cmd: Any) -> None:
        if previous is not None:
            await asyncio.wait([previous])
        try:
            await self.consultation.plane.execute(cmd)
        except MediaPlaneError as exc:
            logger.warning("recording command %s refused: %s", type(cmd).__name__, exc)

    def note(self, kind: str, data: dict[str, Any]) -> None:
        """Chat, mode changes: a line of the running recording's event log."""
        if self.state is State.RUNNING:
            self._note(kind, {"time": time.time(), **data})

    # -- the doctor's side ---------------------------------------------------------------

    async def request(self, doctor: Session, action: str, ref: str) -> None:
        if self.policy != "consent":
            raise ProtocolError(
                ErrorCode.FORBIDDEN, f"this room's recording policy is {self.policy}", ref
            )
        if action == "start":
            if self.state is not State.IDLE:
                raise ProtocolError(ErrorCode.BAD_REQUEST, "recording already requested", ref)
            self.recording_id = secrets.token_hex(8)
            self.audit = []
            self.accepted = set()
            self.state = State.ASKING
            self._step(doctor, "requested")
            for patient in self._patients():
                self._ask(patient)
            await self._start_if_agreed()
        elif action == "stop":
            if self.state is State.IDLE:
                raise ProtocolError(ErrorCode.NOT_FOUND, "no recording", ref)
            self._step(doctor, "stop-requested")
            await self.stop("stopped")
        else:
            raise ProtocolError(ErrorCode.BAD_REQUEST, "action must be start or stop", ref)

    def _patients(self) -> list[Session]:
        return [s for s in self.consultation.admitted() if s.role is Role.PATIENT]

    def _ask(self, patient: Session) -> None:
        self._step(patient, "asked")
        patient.send({"type": "record-consent", "recording_id": self.recording_id})

    # -- the patient's side --------------------------------------------------------------

    async def consent(self, patient: Session, recording_id: str, accept: bool, ref: str) -> None:
        if patient.role is not Role.PATIENT:
            raise ProtocolError(ErrorCode.FORBIDDEN, "only a patient consents", ref)
        if self.state is State.IDLE or recording_id != self.recording_id:
            raise ProtocolError(ErrorCode.NOT_FOUND, "no such recording", ref)
        if accept:
            self._step(patient, "accepted")
            self.accepted.add(patient.id)
            await self._start_if_agreed()
            return
        withdrawn = patient.id in self.accepted
        self.accepted.discard(patient.id)
        self._step(patient, "withdrew" if withdrawn else "declined")
        await self.stop("consent-withdrawn" if withdrawn else "declined")

    async def _start_if_agreed(self) -> None:
        if self.state is not State.ASKING:
            return
        patients = self._patients()
        if not patients or any(p.id not in self.accepted for p in patients):
            return
        self.state = State.STARTING
        self._step(None, "consented", patients=[p.id for p in patients])
        await self._start(None)

    async def _start(self, sources: tuple[str, ...] | None) -> None:
        c = self.consultation
        rid = self.recording_id
        try:
            await c.plane.execute(
                StartRecording(
                    room_id=c.id, recording_id=rid, sources=sources, audit=tuple(self.audit)
                )
            )
        except MediaPlaneError as exc:
            if self.recording_id == rid:
                self.state = State.IDLE
                self._step(None, "failed", error=str(exc))
                self._announce("stopped", "error", str(exc))
            logger.error("room %s: recording %s failed to start: %s", c.id, rid, exc)
            return
        if self.recording_id != rid or self.state is not State.STARTING:
            # stopped while starting (its stop may have reached the plane first): stop it now
            stop = StopRecording(room_id=c.id, recording_id=rid, reason="stopped")
            try:
                await c.plane.execute(stop)
            except MediaPlaneError:
                pass
            return
        self.state = State.RUNNING
        self._step(None, "started")
        self._announce("started", "consented" if sources is None else "policy")

    async def start_devices(self) -> None:
        """Policy `devices`: device streams are recorded from the room's start."""
        if self.policy != "devices" or self.state is not State.IDLE:
            return
        self.recording_id = secrets.token_hex(8)
        self.audit = []
        self.state = State.STARTING
        self._step(None, "policy-devices")
        await self._start(tuple(sorted(DEVICE_SOURCES)))

    async def stop(self, reason: str) -> None:
        if self.state is State.IDLE:
            return
        was, rid = self.state, self.recording_id
        self.state = State.IDLE
        entry = self._step(None, "stopped", reason=reason)
        c = self.consultation
        if was in (State.RUNNING, State.STARTING):
            await self._send(
                StopRecording(room_id=c.id, recording_id=rid, reason=reason, audit=(entry,))
            )
        self._announce("stopped", reason, recording_id=rid)

    def _announce(
        self, state: str, reason: str, error: str = "", *, recording_id: str | None = None
    ) -> None:
        msg: dict[str, Any] = {
            "type": "recording",
            "recording_id": recording_id or self.recording_id,
            "state": state,
            "reason": reason,
        }
        if error:
            msg["error"] = error
        self.consultation.broadcast(msg)

    # -- room changes --------------------------------------------------------------------

    async def admitted(self, session: Session) -> None:
        """A new participant: it learns of a running recording; a patient is asked first."""
        if self.state is State.IDLE or self.policy != "consent":
            if self.state is State.RUNNING:
                session.send(self._state_message())
            return
        if session.role is not Role.PATIENT:
            if self.state is State.RUNNING:
                session.send(self._state_message())
            return
        if self.state in (State.RUNNING, State.STARTING):
            await self.stop("consent-missing")  # never record someone who has not consented
            return
        self._ask(session)

    async def left(self, session: Session) -> None:
        if self.state is State.ASKING and session.role is Role.PATIENT:
            self.accepted.discard(session.id)
            await self._start_if_agreed()

    def _state_message(self) -> dict[str, Any]:
        return {
            "type": "recording",
            "recording_id": self.recording_id,
            "state": "started",
            "reason": "running",
        }

    def media_lost(self) -> None:
        """The media worker holding the room went away, its recording with it (what it sealed
        stays readable: the manifest says `recording`, as after a crash)."""
        if self.state in (State.RUNNING, State.STARTING):
            self.on_stopped(
                RecordingStopped(
                    room_id=self.consultation.id,
                    recording_id=self.recording_id,
                    reason="error",
                    error="the media worker was lost",
                )
            )

    def info(self) -> dict[str, Any]:
        """For the HTTP API's room: the policy and the recording under way, if any."""
        running = self.state is not State.IDLE
        return {
            "policy": self.policy,
            "state": self.state.value,
            "recording_id": self.recording_id if running else None,
        }

    def on_stopped(self, event: RecordingStopped) -> None:
        """The media plane stopped a recording on its own (an error, the room closed)."""
        if event.recording_id != self.recording_id or self.state is State.IDLE:
            return
        self.state = State.IDLE
        self._step(None, "stopped", reason=event.reason, error=event.error)
        if event.error:
            logger.error(
                "room %s: recording %s stopped: %s",
                self.consultation.id,
                event.recording_id,
                event.error,
            )
        self._announce("stopped", event.reason, event.error)
