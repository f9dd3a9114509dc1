// TypeScript declarations of consult.js (docs/client.md). tests/test_pages.py checks that the
// exported names, the Consultation members and the event names match consult.js.

export declare const PROTOCOL_VERSION: 1;

export type Source = "camera" | "microphone" | "stethoscope" | "exam-camera" | "screen";
export declare const SOURCES: Readonly<Record<Source, "audio" | "video">>;

export declare const DEVICE_AUDIO_CONSTRAINTS: Readonly<MediaTrackConstraints>;
export declare function openDeviceAudio(deviceId?: string): Promise<MediaStreamTrack>;

export type TelemetryKind = "spo2" | "heart_rate" | "temperature" | "respiratory_rate" | "blood_pressure" | "ecg";
export declare const TELEMETRY_UNITS: Readonly<Record<TelemetryKind, string>>;

export declare const CloseCode: Readonly<{
  NORMAL: 1000; SHUTDOWN: 1001; BAD_TOKEN: 4001; PROTOCOL: 4002; DENIED: 4003; KICKED: 4004;
  ENDED: 4005; REPLACED: 4006; ROOM_UNAVAILABLE: 4007; TIMEOUT: 4008; REDIRECT: 4011;
}>;

/** An error from the server or the client: `code` is stable, `message` is for developers. */
export declare class ConsultError extends Error {
  constructor(code: string, message?: string, ref?: string | null);
  readonly code: string;
  readonly ref: string | null;
}

export type Role = "doctor" | "patient" | "device" | "observer" | string;
export interface Participant { id: string; role: Role; name: string; modes?: Record<string, Mode>; }
export type Mode = "video" | "audio-only" | "chat-only";
/** Codes, never sentences: a page translates them. */
export type ModeReason = "loss" | "bandwidth" | "recovered" | "resync" | string;
export type State = "new" | "connecting" | "waiting" | "admitted" | "reconnecting" | "denied" | "ended" | "left" | "closed";
/** `ended`, `kicked`, `left`, `denied`, a close code name (`bad-token`, `room-unavailable`...) or a join error code. */
export type CloseReason = string;

export interface ChatMessage { id: string; from: string; name: string; role: Role; text: string; ts: number; }
export interface ModeDetail { participant: string; direction: "uplink" | "downlink"; mode: Mode; reason: ModeReason | null; }
export interface TrackDetail {
  track: MediaStreamTrack; stream: MediaStream; participant: string | null; source: Source | null;
  kind: "audio" | "video"; mid: string; warnings: string[];
}
export interface Publication {
  id: string; source: Source; kind: "audio" | "video"; track: MediaStreamTrack;
  transceiver?: RTCRtpTransceiver; channels?: number; ready: Promise<void>;
}
export interface TelemetryRecord { seq: number; from: string; kind: TelemetryKind; t: number; unit: string; [field: string]: unknown; }
export interface JoinedMessage { type: "joined"; participant: Participant; room: string; state: string; [field: string]: unknown; }

/** Every event of Consultation and its `detail`. */
export interface ConsultationEventMap {
  "joined": CustomEvent<{ participant: Participant; room: string; state: "waiting" | "admitted" }>;
  "state": CustomEvent<{ state: State }>;
  "waiting": CustomEvent<{ position: number | null }>;
  "admitted": CustomEvent<{}>;
  "denied": CustomEvent<{}>;
  "knock": CustomEvent<{ participant: Participant }>;
  "knocks": CustomEvent<{ knocks: Participant[] }>;
  "room": CustomEvent<{ participants: Participant[]; chat: ChatMessage[] }>;
  "participant-joined": CustomEvent<{ participant: Participant }>;
  "participant-left": CustomEvent<{ participant: Participant; reason: string | null }>;
  /** `earlier`: a message of an older page (loadEarlierChat), put in front of `chat`. */
  "chat": CustomEvent<{ message: ChatMessage; earlier?: boolean }>;
  "mode": CustomEvent<ModeDetail>;
  "pause": CustomEvent<{ sources: Source[]; reason: ModeReason | null }>;
  "track": CustomEvent<TrackDetail>;
  "track-ended": CustomEvent<TrackDetail>;
  "connectionstatechange": CustomEvent<{ state: RTCPeerConnectionState }>;
  "signalingstatechange": CustomEvent<{ state: RTCSignalingState }>;
  "reconnecting": CustomEvent<{ attempt: number; delay?: number; code?: number; media?: true }>;
  "resumed": CustomEvent<{ state: string; rejoined: boolean; moved: boolean }>;
  "ended": CustomEvent<{ reason: CloseReason }>;
  "closed": CustomEvent<{ reason: CloseReason }>;
  "error": CustomEvent<{ code: string; message: string; ref: string | null }>;
  "data": CustomEvent<{ data: unknown }>;
  "telemetry": CustomEvent<{ record: TelemetryRecord }>;
  "device-state": CustomEvent<{ participant: string; state: string }>;
}

export interface ConsultationOptions { url?: string; token: string; iceServers?: RTCIceServer[]; iceTransportPolicy?: RTCIceTransportPolicy; reconnect?: boolean; }

export declare class Consultation extends EventTarget {
  constructor(options: ConsultationOptions);
  readonly state: State;
  readonly me: Participant | null;
  readonly room: string | null;
  readonly position: number | null;
  readonly participants: Participant[];
  readonly chat: ChatMessage[];
  /** Older chat is on the server: fetch it with loadEarlierChat(). */
  readonly chatMore: boolean;
  readonly knocks: Participant[];
  readonly modes: ModeDetail[];
  readonly remoteTracks: TrackDetail[];
  readonly publications: Publication[];
  readonly connectionState: RTCPeerConnectionState;
  readonly peerConnection: RTCPeerConnection | null;
  readonly dataChannel: RTCDataChannel | null;
  readonly closeReason: CloseReason | null;
  readonly telemetry: TelemetryRecord[];
  readonly vitals: Record<string, Partial<Record<TelemetryKind, TelemetryRecord>>>;
  readonly deviceStates: Record<string, string>;

  getStats(): Promise<RTCStatsReport | Map<string, unknown>>;
  connect(): Promise<JoinedMessage>;
  sendChat(text: string): Promise<unknown>;
  /** The page of chat before the oldest held (`chat-history`); resolves with the messages added. */
  loadEarlierChat(options?: { limit?: number }): Promise<ChatMessage[]>;
  admit(participantId: string): Promise<unknown>;
  deny(participantId: string): Promise<unknown>;
  kick(participantId: string): Promise<unknown>;
  end(): Promise<unknown>;
  leave(): Promise<void>;
  sendTelemetry(readings: object[]): Promise<unknown>;
  publish(track: MediaStreamTrack, options: { source: Source; negotiate?: "client" | "server"; channels?: 1 | 2 }): Publication;
  unpublish(trackOrPublication: MediaStreamTrack | Publication): void;
  replaceTrack(publication: Publication, track: MediaStreamTrack | null): Promise<void>;
  attach<E extends HTMLMediaElement>(trackInfo: TrackDetail | Publication | MediaStreamTrack, element: E): E;
  detach(element: HTMLMediaElement): void;

  addEventListener<K extends keyof ConsultationEventMap>(type: K, listener: (ev: ConsultationEventMap[K]) => void, options?: boolean | AddEventListenerOptions): void;
  addEventListener(type: string, listener: EventListenerOrEventListenerObject | null, options?: boolean | AddEventListenerOptions): void;
  removeEventListener<K extends keyof ConsultationEventMap>(type: K, listener: (ev: ConsultationEventMap[K]) => void, options?: boolean | EventListenerOptions): void;
  removeEventListener(type: string, listener: EventListenerOrEventListenerObject | null, options?: boolean | EventListenerOptions): void;
}
