{{/* Chart name. */}}
{{- define "retina-otel.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Resource name prefix: <release>-retina-otel unless the release name already contains it. */}}
{{- define "retina-otel.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "retina-otel.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "retina-otel.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: retina-otel
{{- end -}}

{{- define "retina-otel.agent.selectorLabels" -}}
app.kubernetes.io/name: {{ include "retina-otel.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: agent
{{- end -}}

{{- define "retina-otel.operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "retina-otel.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "retina-otel.agent.serviceAccountName" -}}
{{- if .Values.agent.serviceAccount.create -}}
{{- default (printf "%s-agent" (include "retina-otel.fullname" .)) .Values.agent.serviceAccount.name -}}
{{- else -}}
{{- required "agent.serviceAccount.name is required when agent.serviceAccount.create is false" .Values.agent.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "retina-otel.operator.serviceAccountName" -}}
{{- if .Values.operator.serviceAccount.create -}}
{{- default (printf "%s-operator" (include "retina-otel.fullname" .)) .Values.operator.serviceAccount.name -}}
{{- else -}}
{{- required "operator.serviceAccount.name is required when operator.serviceAccount.create is false" .Values.operator.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "retina-otel.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* Whether the operator maintains RetinaEndpoints: explicit value, else follows remote context. */}}
{{- define "retina-otel.operator.retinaEndpoints" -}}
{{- if kindIs "bool" .Values.operator.retinaEndpoints -}}
{{- .Values.operator.retinaEndpoints -}}
{{- else -}}
{{- .Values.agent.remoteContext -}}
{{- end -}}
{{- end -}}

{{/* Environment variable carrying OTLP header number i (its value comes from a Secret). */}}
{{- define "retina-otel.otlpHeaderEnv" -}}
{{- printf "RETINA_OTEL_OTLP_HEADER_%s" (. | upper | replace "-" "_" | replace "." "_") -}}
{{- end -}}

{{/* Name of the operator's ClusterKopfPeering (cluster-scoped: the namespace keeps releases apart). */}}
{{- define "retina-otel.operator.peeringName" -}}
{{- default (printf "%s-%s" (include "retina-otel.fullname" .) .Release.Namespace) .Values.operator.leaderElection.peeringName | trunc 253 | trimSuffix "-" -}}
{{- end -}}

{{/*
"true" when Hubble's metrics are on (agent.hubble.enabled with at least one handler in
agent.hubble.metrics.enabled): the hubblemetrics connector, its port on the pod, Service and monitors.
*/}}
{{- define "retina-otel.agent.hubbleMetrics" -}}
{{- if and .Values.agent.hubble.enabled .Values.agent.hubble.metrics.enabled -}}true{{- end -}}
{{- end -}}
