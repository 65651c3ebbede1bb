{{/* Names, labels, images and the checks values.schema.json cannot express. */}}

{{- define "imageward.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "imageward.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "imageward.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "imageward.selectorLabels" -}}
app.kubernetes.io/name: {{ include "imageward.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "imageward.labels" -}}
helm.sh/chart: {{ include "imageward.chart" . }}
{{ include "imageward.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: imageward
{{- end }}

{{/* The node agent of Layers mode: its own name label, so the operator's Service, PDB
and Deployment selectors (name + instance) never select agent pods. */}}
{{- define "imageward.agentName" -}}
{{- printf "%s-agent" (include "imageward.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "imageward.agentSelectorLabels" -}}
app.kubernetes.io/name: {{ printf "%s-agent" (include "imageward.name" .) | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The same as a label selector string (IMAGEWARD_AGENT_SELECTOR). */}}
{{- define "imageward.agentSelector" -}}
{{- printf "app.kubernetes.io/name=%s,app.kubernetes.io/instance=%s" (printf "%s-agent" (include "imageward.name" .) | trunc 63 | trimSuffix "-") .Release.Name }}
{{- end }}

{{- define "imageward.agentLabels" -}}
helm.sh/chart: {{ include "imageward.chart" . }}
{{ include "imageward.agentSelectorLabels" . }}
app.kubernetes.io/component: agent
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: imageward
{{- end }}

{{- define "imageward.agentKeySecretName" -}}
{{- printf "%s-agent-key" (include "imageward.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "imageward.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "imageward.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Service in the webhook configurations' clientConfig (also serves /metrics). */}}
{{- define "imageward.serviceName" -}}
{{- include "imageward.fullname" . }}
{{- end }}

{{- define "imageward.tlsSecretName" -}}
{{- default (printf "%s-tls" (include "imageward.fullname" .)) .Values.tls.secretName }}
{{- end }}

{{- define "imageward.validatingName" -}}
{{- default (include "imageward.fullname" .) .Values.webhook.validatingConfigurationName }}
{{- end }}

{{- define "imageward.mutatingName" -}}
{{- default (include "imageward.fullname" .) .Values.webhook.mutatingConfigurationName }}
{{- end }}

{{- define "imageward.certificateName" -}}
{{- printf "%s-serving" (include "imageward.fullname" .) }}
{{- end }}

{{- define "imageward.credentialsSecretName" -}}
{{- default (printf "%s-registry-credentials" (include "imageward.fullname" .)) .Values.registry.credentials.existingSecret }}
{{- end }}

{{- define "imageward.caBundleConfigMapName" -}}
{{- default (printf "%s-registry-ca" (include "imageward.fullname" .)) .Values.registry.caBundle.existingConfigMap }}
{{- end }}

{{- define "imageward.image" -}}
{{- $repository := .Values.image.repository }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" $repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" $repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* registry.mirrors as IMAGEWARD_REGISTRY_MIRRORS wants it: "registry=mirror,..." (sorted). */}}
{{- define "imageward.mirrors" -}}
{{- $pairs := list }}
{{- range $registry, $mirror := .Values.registry.mirrors }}
{{- $pairs = append $pairs (printf "%s=%s" $registry $mirror) }}
{{- end }}
{{- join "," $pairs }}
{{- end }}

{{/* kube-system and the release namespace are always excluded; then the user's list. */}}
{{- define "imageward.excludedNamespaces" -}}
{{- $list := list "kube-system" .Release.Namespace }}
{{- range .Values.webhook.excludedNamespaces }}
{{- $list = append $list . }}
{{- end }}
{{- uniq $list | toJson }}
{{- end }}

{{/* The namespaceSelector shared by both webhooks. */}}
{{- define "imageward.namespaceSelector" -}}
matchExpressions:
  - key: kubernetes.io/metadata.name
    operator: NotIn
    values: {{ include "imageward.excludedNamespaces" . }}
{{- with .Values.webhook.namespaceSelectorExpressions }}
{{ toYaml . | indent 2 }}
{{- end }}
{{- end }}

{{/* The caBundle already patched in by the operator (or the CA injector), kept on upgrade. */}}
{{- define "imageward.currentCaBundle" -}}
{{- $kind := index . 0 }}
{{- $name := index . 1 }}
{{- $live := lookup "admissionregistration.k8s.io/v1" $kind "" $name }}
{{- if $live }}
{{- range $live.webhooks }}
{{- if .clientConfig.caBundle }}
{{- .clientConfig.caBundle }}
{{- break }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* Checks across values, which values.schema.json cannot express. */}}
{{- define "imageward.validate" -}}
{{- if ge (float64 .Values.webhook.admissionDeadline) (float64 .Values.webhook.timeoutSeconds) }}
{{- fail (printf "webhook.admissionDeadline (%v) must be below webhook.timeoutSeconds (%v): the apiserver would give up before imageward answers" .Values.webhook.admissionDeadline .Values.webhook.timeoutSeconds) }}
{{- end }}
{{- if and (not .Values.peering.enabled) (gt (int .Values.replicaCount) 1) }}
{{- fail "peering.enabled=false runs every replica standalone: with replicaCount > 1 they would all run the controllers; set replicaCount: 1" }}
{{- end }}
{{- if and .Values.registry.caBundle.existingConfigMap .Values.registry.caBundle.pem }}
{{- fail "registry.caBundle: set existingConfigMap or pem, not both" }}
{{- end }}
{{- if and .Values.registry.credentials.existingSecret .Values.registry.credentials.dockerConfigJson }}
{{- fail "registry.credentials: set existingSecret or dockerConfigJson, not both" }}
{{- end }}
{{- end }}
