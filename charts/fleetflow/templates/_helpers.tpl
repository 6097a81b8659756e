{{/* Names and labels shared by every template of the chart. */}}

{{- define "fleetflow.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The release's full name: "<release>-fleetflow", or just the release name when it already says fleetflow. */}}
{{- define "fleetflow.fullname" -}}
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

{{- define "fleetflow.operatorName" -}}
{{- printf "%s-operator" (include "fleetflow.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "fleetflow.selectorLabels" -}}
app.kubernetes.io/name: {{ include "fleetflow.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "fleetflow.labels" -}}
{{ include "fleetflow.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: fleetflow
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end -}}

{{- define "fleetflow.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "fleetflow.operatorName" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* repository@digest when a digest is given, else repository:tag (tag defaults to the appVersion). */}}
{{- define "fleetflow.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* The namespaces the operator watches, or the release namespace's peers: used by RBAC and monitors. */}}
{{- define "fleetflow.watchesAll" -}}
{{- if empty .Values.operator.watchNamespaces -}}true{{- end -}}
{{- end -}}

{{/* Series labels the dashboards filter on, taken from the labels the operator puts on its pods. */}}
{{- define "fleetflow.metricRelabelings" -}}
- sourceLabels: [__meta_kubernetes_pod_label_fleetflow_io_fleet]
  targetLabel: fleet
- sourceLabels: [__meta_kubernetes_pod_label_fleetflow_io_pipeline]
  targetLabel: pipeline
- sourceLabels: [__meta_kubernetes_pod_label_app_kubernetes_io_name]
  regex: fleetflow-(.+)
  targetLabel: component
{{- end -}}

{{/* Where the monitors look: the watched namespaces, or all of them. */}}
{{- define "fleetflow.monitorNamespaceSelector" -}}
{{- if include "fleetflow.watchesAll" . -}}
any: true
{{- else -}}
matchNames:
  {{- toYaml .Values.operator.watchNamespaces | nindent 2 }}
{{- end -}}
{{- end -}}

{{/*
The names of .Values.imagePullSecrets, separated by commas, as FLEETFLOW_OPERATOR_IMAGE_PULL_SECRETS takes them.
*/}}
{{- define "fleetflow.pullSecretNames" -}}
{{- $names := list -}}
{{- range .Values.imagePullSecrets -}}
{{- $names = append $names .name -}}
{{- end -}}
{{- join "," $names -}}
{{- end -}}
