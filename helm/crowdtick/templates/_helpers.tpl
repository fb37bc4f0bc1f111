{{/* vim: set filetype=mustache: */}}

{{/* The chart name (nameOverride). */}}
{{- define "crowdtick.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The release's full name (fullnameOverride; else <release>, or <release>-<name> when the release
name does not contain the chart name). Kept to 40 characters so every object name derived from it
(<fullname>-<role>, the processor pods' <fullname>-processor-<n> and their controller-revision-hash
label) stays within Kubernetes' 63-character limits.
*/}}
{{- define "crowdtick.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* The name of a component's objects: <fullname>-<component>. Call with (dict "root" $ "component" "ingest"). */}}
{{- define "crowdtick.componentName" -}}
{{- printf "%s-%s" (include "crowdtick.fullname" .root) .component }}
{{- end }}

{{/* chart label value: <name>-<version>. */}}
{{- define "crowdtick.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels of the release (every component). */}}
{{- define "crowdtick.selectorLabels" -}}
app.kubernetes.io/name: {{ include "crowdtick.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The standard labels of every object. */}}
{{- define "crowdtick.labels" -}}
helm.sh/chart: {{ include "crowdtick.chart" . }}
{{ include "crowdtick.selectorLabels" . }}
app.kubernetes.io/version: {{ include "crowdtick.imageTag" . | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: crowdtick
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of one component. Call with (dict "root" $ "component" "ingest"). */}}
{{- define "crowdtick.componentSelectorLabels" -}}
{{ include "crowdtick.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* The standard labels of one component's objects. Call with (dict "root" $ "component" "ingest"). */}}
{{- define "crowdtick.componentLabels" -}}
{{ include "crowdtick.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "crowdtick.imageTag" -}}
{{- .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/* The CrowdTick image: repository@digest, or repository:tag. */}}
{{- define "crowdtick.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (include "crowdtick.imageTag" .) }}
{{- end }}
{{- end }}

{{/* The service account of the CrowdTick pods. */}}
{{- define "crowdtick.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "crowdtick.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The migration Job's service account ("" = the namespace's default; see values.yaml). */}}
{{- define "crowdtick.migrationsServiceAccountName" -}}
{{- if .Values.migrations.serviceAccountName }}
{{- .Values.migrations.serviceAccountName }}
{{- else if not .Values.serviceAccount.create }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The address every node binds: listenHost:containerPort (IPv6 hosts in brackets). */}}
{{- define "crowdtick.listen" -}}
{{- $host := .Values.config.listenHost }}
{{- if and (contains ":" $host) (not (hasPrefix "[" $host)) }}
{{- $host = printf "[%s]" $host }}
{{- end }}
{{- printf "%s:%d" $host (int .Values.containerPort) }}
{{- end }}

{{/*
crowdtick.toml: every CrowdTick setting that is not a secret, built from the values. Strings are
written with toJson, whose escapes are valid in TOML basic strings. Not here:
- from environment variables (a Secret or the pod): listen, data_dir, operator_keys,
  ingest.aggregators, ingest.voter_tokens.hmac_secret, postgres.url, redis.url,
  processor.instance_id;
- the embedded log's own files and commits, which no pod of the chart has (votes and tallies go
  to Kafka): log.commit_interval_us, log.segment_mb, log.zero_ahead_kb, log.retire_after_snapshot;
- [seed], the old API's throttles: the old API is served only by a node of every role (`crowdtick
  serve`), which the chart does not run.
deploy/checks/test_helm.py (test_the_chart_renders_every_setting_but_those_it_names) holds this
list to the binary's settings.
*/}}
{{- define "crowdtick.toml" -}}
{{- $v := .Values -}}
# crowdtick.toml of release {{ .Release.Name }} (chart {{ include "crowdtick.chart" . }}), built from the chart's values: change those, not this.
# From the environment (Secret / pod): operator_keys (CROWDTICK_OPERATOR_KEYS), ingest.aggregators
# (CROWDTICK_INGEST__AGGREGATORS), ingest.voter_tokens.hmac_secret (CROWDTICK_INGEST__VOTER_TOKENS__HMAC_SECRET,
# when set), postgres.url (CROWDTICK_POSTGRES__URL), redis.url (CROWDTICK_REDIS__URL),
# processor.instance_id (CROWDTICK_PROCESSOR__INSTANCE_ID = the processor pod's name).
# listen and data_dir come from the pod's environment (CROWDTICK_LISTEN, CROWDTICK_DATA_DIR =
# /tmp/crowdtick: the distributed roles keep nothing on disk; /tmp is the pod's writable emptyDir).
public_url = {{ $v.config.publicUrl | toJson }}

[log]
partitions = {{ $v.config.log.partitions | int64 }}
fsync = {{ $v.config.log.fsync }}
queue_capacity = {{ $v.config.log.queueCapacity | int64 }}

[ingest]
deadline_ms = {{ $v.ingest.deadlineMs | int64 }}
max_batch_votes = {{ $v.ingest.maxBatchVotes | int64 }}
rate_limit_per_sec = {{ $v.ingest.rateLimit.perSecond | int64 }}
rate_limit_burst = {{ $v.ingest.rateLimit.burst | int64 }}
rate_limit_exempt_loopback = {{ $v.ingest.rateLimit.exemptLoopback }}
max_in_flight_votes = {{ $v.ingest.admission.maxInFlightVotes | int64 }}
shed_target_ms = {{ $v.ingest.admission.shedTargetMs | int64 }}
shed_interval_ms = {{ $v.ingest.admission.shedIntervalMs | int64 }}
shed_wait_target_ms = {{ $v.ingest.admission.shedWaitTargetMs | int64 }}
shed_wait_interval_ms = {{ $v.ingest.admission.shedWaitIntervalMs | int64 }}
pause_reads_in_flight = {{ $v.ingest.admission.pauseReadsInFlight | int64 }}
shed_backlog_appends = {{ $v.ingest.admission.shedBacklogAppends | int64 }}
shed_backlog_quiet_ms = {{ $v.ingest.admission.shedBacklogQuietMs | int64 }}
shed_retry_after_max_secs = {{ $v.ingest.admission.shedRetryAfterMaxSecs | int64 }}
{{- with $v.ingest.voterTokens }}
{{- if or .algorithm .publicKeyPem .issuer .audience .leewaySecs }}

[ingest.voter_tokens]
algorithm = {{ .algorithm | default "" | toJson }}
public_key_pem = {{ .publicKeyPem | default "" | toJson }}
issuer = {{ .issuer | default "" | toJson }}
audience = {{ .audience | default "" | toJson }}
leeway_secs = {{ .leewaySecs | default 0 | int64 }}
{{- end }}
{{- end }}

[kafka]
brokers = {{ $v.kafka.brokers | toJson }}
topic_prefix = {{ $v.kafka.topicPrefix | toJson }}
replication_factor = {{ $v.kafka.replicationFactor | int64 }}
{{- $settings := list }}
{{- range $key := keys $v.kafka.settings | sortAlpha }}
{{- $settings = append $settings (printf "%s = %s" (toJson $key) (index $v.kafka.settings $key | toString | toJson)) }}
{{- end }}
settings = {{ if $settings }}{ {{ join ", " $settings }} }{{ else }}{}{{ end }}

[postgres]
schema = {{ $v.postgres.schema | toJson }}

[redis]
key_prefix = {{ $v.redis.keyPrefix | toJson }}

[polls]
refresh_ms = {{ $v.config.polls.refreshMs | int64 }}
close_lead_ms = {{ $v.config.polls.closeLeadMs | int64 }}

[processor]
flush_interval_ms = {{ $v.processor.flushIntervalMs | int64 }}
window_ms = {{ $v.processor.windowMs | int64 }}
allowed_lateness_ms = {{ $v.processor.allowedLatenessMs | int64 }}
group_id = {{ $v.processor.groupId | toJson }}
assignment_strategy = {{ $v.processor.assignmentStrategy | toJson }}
session_timeout_ms = {{ $v.processor.sessionTimeoutMs | int64 }}
checkpoint_interval_ms = {{ $v.processor.checkpointIntervalMs | int64 }}
accept_lost_votes = {{ $v.processor.acceptLostVotes | default list | toJson }}

[realtime]
coalesce_ms = {{ $v.realtime.coalesceMs | int64 }}
min_coalesce_ms = {{ $v.realtime.minCoalesceMs | int64 }}
frame_budget = {{ $v.realtime.frameBudget | int64 }}
allowed_origins = {{ $v.realtime.allowedOrigins | default list | toJson }}
send_timeout_ms = {{ $v.realtime.sendTimeoutMs | int64 }}
socket_send_buffer_bytes = {{ $v.realtime.socketSendBufferBytes | int64 }}
fanout_threads = {{ $v.realtime.fanoutThreads | int64 }}
fanout_nice = {{ $v.realtime.fanoutNice | int64 }}
sse_keep_alive_secs = {{ $v.realtime.sseKeepAliveSecs | int64 }}

[http]
header_read_timeout_ms = {{ $v.config.http.headerReadTimeoutMs | int64 }}
body_read_timeout_ms = {{ $v.config.http.bodyReadTimeoutMs | int64 }}
max_connections = {{ $v.config.http.maxConnections | int64 }}
max_connections_per_address = {{ $v.config.http.maxConnectionsPerAddress | int64 }}
limits_exempt_loopback = {{ $v.config.http.limitsExemptLoopback }}
write_stall_timeout_ms = {{ $v.config.http.writeStallTimeoutMs | int64 }}
listen_backlog = {{ $v.config.http.listenBacklog | int64 }}
{{- with $v.scylla }}
{{- if .hosts }}

# ScyllaDB keeps the partial tallies, windows and checkpoints (polls stay in PostgreSQL).
# `crowdtick migrate` (the migrations Job) creates the keyspace and tables; every pod also creates
# them at start if missing.
[scylla]
hosts = {{ join "," .hosts | toJson }}
keyspace = {{ .keyspace | toJson }}
replication_class = {{ .replicationClass | toJson }}
replication_factor = {{ .replicationFactor | int64 }}
max_concurrent_writes = {{ .maxConcurrentWrites | int64 }}
{{- end }}
{{- end }}
{{- with $v.schemaRegistry }}
{{- if .url }}

# Every record value on the votes and tallies topics in the Confluent wire format, subjects
# "<topic>-value".
[schema_registry]
url = {{ .url | toJson }}
auto_register = {{ .autoRegister }}
timeout_ms = {{ .timeoutMs | int64 }}
{{- end }}
{{- end }}
{{- end }}

{{/* Whether the chart creates its own Secret ("true" or ""). */}}
{{- define "crowdtick.createSecret" -}}
{{- $a := .Values.auth }}
{{- if or (not $a.existingSecret) (not $a.aggregatorsExistingSecret) (and $a.voterTokens.hmacSecret (not $a.voterTokens.existingSecret)) (not .Values.postgres.existingSecret) (and .Values.redis.url (not .Values.redis.existingSecret)) -}}
true
{{- end }}
{{- end }}

{{/*
auth.aggregators as CROWDTICK_INGEST__AGGREGATORS takes it: an inline array of inline tables that
figment parses, [{name="sms-uk", key="...", votes_per_sec=20000, burst=0}, ...], or [] for none.
The strings are written with toJson, whose escapes figment reads back (\" \\ \n \uXXXX ...).
*/}}
{{- define "crowdtick.aggregatorsValue" -}}
{{- $items := list }}
{{- range .Values.auth.aggregators }}
{{- $perSec := ternary .votesPerSec 20000 (hasKey . "votesPerSec") }}
{{- $items = append $items (printf "{name=%s, key=%s, votes_per_sec=%d, burst=%d}" (toJson .name) (toJson .key) (int64 $perSec) (int64 (.burst | default 0))) }}
{{- end }}
{{- printf "[%s]" (join ", " $items) }}
{{- end }}

{{/*
The operator keys as a JSON list: from auth.operatorKeys; else the key already in the release's
Secret (kept across upgrades); else one new random key.
*/}}
{{- define "crowdtick.operatorKeysJson" -}}
{{- if .Values.auth.operatorKeys }}
{{- .Values.auth.operatorKeys | toJson }}
{{- else }}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (include "crowdtick.fullname" .) }}
{{- if and $existing $existing.data (hasKey $existing.data "operator-keys") }}
{{- index $existing.data "operator-keys" | b64dec }}
{{- else }}
{{- list (randAlphaNum 40) | toJson }}
{{- end }}
{{- end }}
{{- end }}

{{/* Changes whenever the chart's Secret's inputs change (rolls the pods). */}}
{{- define "crowdtick.secretChecksum" -}}
{{- dict "auth" .Values.auth "postgres" .Values.postgres "redis" .Values.redis | toJson | sha256sum }}
{{- end }}

{{/* (name, key) of the Secret holding the operator keys. */}}
{{- define "crowdtick.operatorKeysSecretRef" -}}
name: {{ .Values.auth.existingSecret | default (include "crowdtick.fullname" .) }}
key: {{ ternary .Values.auth.existingSecretKey "operator-keys" (not (empty .Values.auth.existingSecret)) }}
{{- end }}

{{/*
Environment variables of the secrets, for every CrowdTick service container. The aggregators are
always set (from the chart's Secret, [] when none are configured, or from
auth.aggregatorsExistingSecret), so the binary's laptop default (a `dev` aggregator with a public
key) never applies in a release.
*/}}
{{- define "crowdtick.secretEnv" -}}
- name: CROWDTICK_OPERATOR_KEYS
  valueFrom:
    secretKeyRef:
      {{- include "crowdtick.operatorKeysSecretRef" . | nindent 6 }}
- name: CROWDTICK_INGEST__AGGREGATORS
  valueFrom:
    secretKeyRef:
      name: {{ .Values.auth.aggregatorsExistingSecret | default (include "crowdtick.fullname" .) }}
      key: {{ ternary .Values.auth.aggregatorsExistingSecretKey "aggregators" (not (empty .Values.auth.aggregatorsExistingSecret)) }}
{{- with .Values.auth.voterTokens }}
{{- if or .existingSecret .hmacSecret }}
- name: CROWDTICK_INGEST__VOTER_TOKENS__HMAC_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ .existingSecret | default (include "crowdtick.fullname" $) }}
      key: {{ ternary .existingSecretKey "voter-token-hmac-secret" (not (empty .existingSecret)) }}
{{- end }}
{{- end }}
- name: CROWDTICK_POSTGRES__URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.postgres.existingSecret | default (include "crowdtick.fullname" .) }}
      key: {{ ternary .Values.postgres.existingSecretKey "postgres-url" (not (empty .Values.postgres.existingSecret)) }}
{{- if or .Values.redis.existingSecret .Values.redis.url }}
- name: CROWDTICK_REDIS__URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.redis.existingSecret | default (include "crowdtick.fullname" .) }}
      key: {{ ternary .Values.redis.existingSecretKey "redis-url" (not (empty .Values.redis.existingSecret)) }}
{{- end }}
{{- end }}

{{/* Security contexts. */}}
{{- define "crowdtick.podSecurityContext" -}}
{{- toYaml .Values.podSecurityContext }}
{{- end }}
{{- define "crowdtick.securityContext" -}}
{{- toYaml .Values.securityContext }}
{{- end }}

{{/*
Checks what values.schema.json cannot express (and repeats its replica limit, in case the schema
is bypassed). Included by the ConfigMap, which every release renders.
*/}}
{{- define "crowdtick.validate" -}}
{{- $partitions := int .Values.config.log.partitions }}
{{- $processors := int .Values.processor.replicaCount }}
{{- if gt $processors $partitions }}
{{- fail (printf "processor.replicaCount (%d) must not exceed config.log.partitions (%d): a processor without a partition of the votes topic would sit idle in the consumer group. Lower processor.replicaCount, or raise config.log.partitions before the first vote (it is fixed once votes are written)." $processors $partitions) }}
{{- end }}
{{- $_ := required "kafka.brokers is required (host:port[,host:port...] of the external Kafka)" .Values.kafka.brokers }}
{{- if not .Values.auth.aggregatorsExistingSecret }}
{{- $names := dict }}
{{- $keys := dict }}
{{- range .Values.auth.aggregators }}
{{- if hasKey $names (toString .name) }}
{{- fail (printf "auth.aggregators: the name %q appears twice (each aggregator needs its own name, its voters' namespace)" (toString .name)) }}
{{- end }}
{{- if hasKey $keys (toString .key | sha256sum) }}
{{- fail (printf "auth.aggregators: the key of %q is another aggregator's too (each needs its own key)" (toString .name)) }}
{{- end }}
{{- $_ := set $names (toString .name) true }}
{{- $_ := set $keys (toString .key | sha256sum) true }}
{{- end }}
{{- end }}
{{- if not (or .Values.postgres.url .Values.postgres.existingSecret) }}
{{- fail "postgres.url (or postgres.existingSecret) is required: CrowdTick's distributed mode keeps polls and tallies in PostgreSQL" }}
{{- end }}
{{- with .Values.ingest.admission }}
{{- if and (gt (int64 .shedBacklogAppends) 0) (ge (int64 .shedBacklogAppends) (int64 .pauseReadsInFlight)) }}
{{- fail (printf "ingest.admission.shedBacklogAppends (%d) must be below ingest.admission.pauseReadsInFlight (%d): the rule starts at a read pause, and a bound at or above it is reached only while reads are paused, so it would shed next to nothing (a quarter of it was measured; 0 turns the rule off)" (int64 .shedBacklogAppends) (int64 .pauseReadsInFlight)) }}
{{- end }}
{{- end }}
{{- if gt (mul 4 (int64 .Values.config.polls.refreshMs)) (int64 .Values.config.polls.closeLeadMs) }}
{{- fail (printf "config.polls.refreshMs (%d) must be at most a quarter of config.polls.closeLeadMs (%d): every ingest edge must re-read the poll catalog several times before a close applies" (int64 .Values.config.polls.refreshMs) (int64 .Values.config.polls.closeLeadMs)) }}
{{- end }}
{{- end }}

{{/* A probe. Call with (dict "probe" .Values.probes.liveness). */}}
{{- define "crowdtick.probe" -}}
httpGet:
  path: {{ .probe.path }}
  port: http
periodSeconds: {{ .probe.periodSeconds }}
timeoutSeconds: {{ .probe.timeoutSeconds }}
failureThreshold: {{ .probe.failureThreshold }}
{{- with .probe.successThreshold }}
successThreshold: {{ . }}
{{- end }}
{{- with .probe.initialDelaySeconds }}
initialDelaySeconds: {{ . }}
{{- end }}
{{- end }}

{{/*
The pod template of a CrowdTick role (ingest, processor, query, realtime).
Call with (dict "root" $ "role" "ingest").
*/}}
{{- define "crowdtick.podTemplate" -}}
{{- $root := .root }}
{{- $role := .role }}
{{- $v := $root.Values }}
{{- $cfg := index $v $role }}
{{- $component := dict "root" $root "component" $role -}}
metadata:
  labels:
    {{- include "crowdtick.componentLabels" $component | nindent 4 }}
    {{- with (merge (dict) ($cfg.podLabels | default dict) ($v.podLabels | default dict)) }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  annotations:
    checksum/config: {{ include "crowdtick.toml" $root | sha256sum }}
    checksum/secret: {{ include "crowdtick.secretChecksum" $root }}
    {{- with (merge (dict) ($cfg.podAnnotations | default dict) ($v.podAnnotations | default dict)) }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ include "crowdtick.serviceAccountName" $root }}
  automountServiceAccountToken: {{ $v.serviceAccount.automountServiceAccountToken }}
  # CrowdTick refuses unknown CROWDTICK_* variables, and Kubernetes' service links would add some
  # (CROWDTICK_QUERY_SERVICE_HOST, ... for a release named "crowdtick"): off.
  enableServiceLinks: false
  {{- with $v.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with ($cfg.priorityClassName | default $v.priorityClassName) }}
  priorityClassName: {{ . }}
  {{- end }}
  securityContext:
    {{- include "crowdtick.podSecurityContext" $root | nindent 4 }}
  terminationGracePeriodSeconds: {{ $cfg.terminationGracePeriodSeconds }}
  {{- with ($cfg.nodeSelector | default $v.nodeSelector) }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with ($cfg.tolerations | default $v.tolerations) }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with ($cfg.affinity | default $v.affinity) }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with ($cfg.topologySpreadConstraints | default $v.topologySpreadConstraints) }}
  topologySpreadConstraints:
    {{- range . }}
    {{- $c := deepCopy . }}
    {{- if not $c.labelSelector }}
    {{- $_ := set $c "labelSelector" (dict "matchLabels" (include "crowdtick.componentSelectorLabels" $component | fromYaml)) }}
    {{- end }}
    {{- toYaml (list $c) | nindent 4 }}
    {{- end }}
  {{- end }}
  containers:
    - name: {{ $role }}
      image: {{ include "crowdtick.image" $root | quote }}
      imagePullPolicy: {{ $v.image.pullPolicy }}
      args: [{{ $role | quote }}]
      ports:
        - name: http
          containerPort: {{ $v.containerPort }}
          protocol: TCP
      env:
        - name: CROWDTICK_CONFIG
          value: /etc/crowdtick/crowdtick.toml
        # The image sets these two as environment variables, which win over the file: set here.
        - name: CROWDTICK_LISTEN
          value: {{ include "crowdtick.listen" $root | quote }}
        - name: CROWDTICK_DATA_DIR
          value: /tmp/crowdtick
        {{- include "crowdtick.secretEnv" $root | nindent 8 }}
        {{- if eq $role "processor" }}
        # Static group membership: the pod's stable name is its group.instance.id.
        - name: CROWDTICK_PROCESSOR__INSTANCE_ID
          valueFrom:
            fieldRef:
              fieldPath: metadata.name
        {{- end }}
        - name: RUST_LOG
          value: {{ $v.config.logLevel | quote }}
        {{- with $v.extraEnv }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
        {{- with $cfg.extraEnv }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- if $v.probes.startup.enabled }}
      startupProbe:
        {{- include "crowdtick.probe" (dict "probe" $v.probes.startup) | nindent 8 }}
      {{- end }}
      {{- if $v.probes.liveness.enabled }}
      livenessProbe:
        {{- include "crowdtick.probe" (dict "probe" $v.probes.liveness) | nindent 8 }}
      {{- end }}
      {{- if $v.probes.readiness.enabled }}
      readinessProbe:
        {{- include "crowdtick.probe" (dict "probe" $v.probes.readiness) | nindent 8 }}
      {{- end }}
      {{- with $cfg.resources }}
      resources:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      securityContext:
        {{- include "crowdtick.securityContext" $root | nindent 8 }}
      {{- with $cfg.lifecycle }}
      lifecycle:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      volumeMounts:
        - name: config
          mountPath: /etc/crowdtick
          readOnly: true
        - name: tmp
          mountPath: /tmp
        {{- with $v.extraVolumeMounts }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
  volumes:
    - name: config
      configMap:
        name: {{ include "crowdtick.fullname" $root }}
    - name: tmp
      emptyDir:
        sizeLimit: {{ $v.tmpVolume.sizeLimit }}
    {{- with $v.extraVolumes }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end }}
