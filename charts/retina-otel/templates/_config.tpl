{{/*
The agent's pipeline configuration (retina_otel/config.py), built from values. Which keys each
component takes is checked by tests/test_chart.py, which runs retina_otel.config.parse_config on the
rendered ConfigMap for every values case.
*/}}
{{- define "retina-otel.agent.config" -}}
{{- $a := .Values.agent -}}
{{- $receivers := dict -}}
{{- $nodeReceivers := list -}}
{{- $flowReceivers := list -}}
{{- range $name := list "packetforward" "linuxutil" "packetparser" "dropreason" "tcpretrans" "dns" "tcplatency" "nodeconnectivity" -}}
{{- $r := index $a.receivers $name -}}
{{- if $r.enabled -}}
{{- $derived := dict -}}
{{- /* Node receivers publish metrics only (tcplatency too: RTT reaches flow records through the
tcplatency processor, which reads the receiver's table). */ -}}
{{- if eq $name "nodeconnectivity" -}}
{{- /* Probes the other agents' health port; its nodes come from k8sattributes' watch (dropped below
without it). */ -}}
{{- $_ := set $derived "port" (int $a.healthPort) -}}
{{- $nodeReceivers = append $nodeReceivers $name -}}
{{- else if or (eq $name "packetforward") (eq $name "linuxutil") (eq $name "tcplatency") -}}
{{- $_ := set $derived "interval" $a.metricsInterval -}}
{{- $nodeReceivers = append $nodeReceivers $name -}}
{{- else -}}
{{- $flowReceivers = append $flowReceivers $name -}}
{{- end -}}
{{- if eq $name "packetparser" -}}
{{- $_ := set $derived "aggregation" $a.dataAggregationLevel -}}
{{- $_ := set $derived "sampling_rate" $a.dataSamplingRate -}}
{{- end -}}
{{- $_ := set $receivers $name (merge (deepCopy ($r.config | default dict)) $derived) -}}
{{- end -}}
{{- end -}}

{{- $processors := dict -}}
{{- $flowProcessors := list -}}
{{- /* Connectors end the logs pipeline and feed metrics (flowmetrics, hubblemetrics) or traces (spans)
pipelines (docs/pipelines.md). */ -}}
{{- $connectors := dict -}}
{{- $metricConnectors := list -}}
{{- $logConnectors := list -}}
{{- if and $flowReceivers $a.podLevel -}}
{{- if $a.processors.k8sattributes.enabled -}}
{{- $k8s := dict "source" "kubernetes" "enable_annotations" $a.enableAnnotations "remote_context" $a.remoteContext "use_retina_endpoints" $a.remoteContext -}}
{{- $_ := set $processors "k8sattributes" (merge (deepCopy ($a.processors.k8sattributes.config | default dict)) $k8s) -}}
{{- $flowProcessors = append $flowProcessors "k8sattributes" -}}
{{- end -}}
{{- if and $a.processors.tcplatency.enabled $a.receivers.tcplatency.enabled -}}
{{- $_ := set $processors "tcplatency" (deepCopy ($a.processors.tcplatency.config | default dict)) -}}
{{- $flowProcessors = append $flowProcessors "tcplatency" -}}
{{- end -}}
{{- if $a.processors.flowmetrics.enabled -}}
{{- $fm := dict "pod_level" true "remote_context" $a.remoteContext "enable_annotations" $a.enableAnnotations "metrics_configuration" (dict "enabled" true) -}}
{{- $_ := set $connectors "flowmetrics" (merge (deepCopy ($a.processors.flowmetrics.config | default dict)) $fm) -}}
{{- $metricConnectors = append $metricConnectors "flowmetrics" -}}
{{- $logConnectors = append $logConnectors "flowmetrics" -}}
{{- end -}}
{{- end -}}

{{- /* Hubble mode: Hubble's metrics (hubble_*) on their own port, as Retina's Hubble chart serves them. */ -}}
{{- $hubbleExporters := list -}}
{{- if include "retina-otel.agent.hubbleMetrics" . -}}
{{- if not $a.podLevel -}}{{- fail "agent.hubble.enabled needs agent.podLevel: Hubble's metrics have pod contexts" -}}{{- end -}}
{{- if not $flowReceivers -}}{{- fail "agent.hubble.enabled needs a flow receiver (packetparser, dropreason, tcpretrans or dns)" -}}{{- end -}}
{{- $hm := dict "metrics" $a.hubble.metrics.enabled -}}
{{- $_ := set $connectors "hubblemetrics" (merge (deepCopy ($a.hubble.metrics.config | default dict)) $hm) -}}
{{- $logConnectors = append $logConnectors "hubblemetrics" -}}
{{- $hubbleExporters = list "prometheus/hubble" -}}
{{- end -}}

{{- if and (hasKey $receivers "nodeconnectivity") (not (hasKey $processors "k8sattributes")) -}}
{{- $_ := unset $receivers "nodeconnectivity" -}}
{{- $nodeReceivers = without $nodeReceivers "nodeconnectivity" -}}
{{- end -}}

{{- $exporters := dict "prometheus" (dict "endpoint" (printf "0.0.0.0:%d" (int $a.metricsPort))) -}}
{{- $metricExporters := list "prometheus" -}}
{{- $logExporters := $logConnectors -}}
{{- if $hubbleExporters -}}
{{- $_ := set $exporters "prometheus/hubble" (dict "endpoint" (printf "0.0.0.0:%d" (int $a.hubble.metrics.port))) -}}
{{- end -}}
{{- if $a.otlp.enabled -}}
{{- $type := ternary "otlp" "otlphttp" (eq $a.otlp.protocol "grpc") -}}
{{- $signals := list -}}
{{- if $a.otlp.metrics -}}{{- $signals = append $signals "metrics" -}}{{- end -}}
{{- if and $a.otlp.flowLogs $flowReceivers -}}{{- $signals = append $signals "logs" -}}{{- end -}}
{{- if and $a.traces.enabled $flowReceivers $a.podLevel -}}{{- $signals = append $signals "traces" -}}{{- end -}}
{{- if $signals -}}
{{- $otlp := dict "endpoint" (required "agent.otlp.endpoint is required when agent.otlp.enabled is true" $a.otlp.endpoint) "protocol" $a.otlp.protocol "tls" (dict "insecure" $a.otlp.insecure) "compression" $a.otlp.compression "timeout" $a.otlp.timeout "interval" $a.metricsInterval "signals" $signals -}}
{{- if $a.otlp.headers -}}
{{- $headers := dict -}}
{{- range $h := $a.otlp.headers -}}
{{- $_ := set $headers $h.name (printf "${env:%s}" (include "retina-otel.otlpHeaderEnv" $h.name)) -}}
{{- end -}}
{{- $_ := set $otlp "headers" $headers -}}
{{- end -}}
{{- $_ := set $exporters $type $otlp -}}
{{- if has "metrics" $signals -}}
{{- $metricExporters = append $metricExporters $type -}}
{{- if $hubbleExporters -}}{{- $hubbleExporters = append $hubbleExporters $type -}}{{- end -}}
{{- end -}}
{{- if has "logs" $signals -}}{{- $logExporters = append $logExporters $type -}}{{- end -}}
{{- end -}}
{{- end -}}
{{- if and $a.observer.enabled $flowReceivers -}}
{{- $observer := dict "buffer_size" (int $a.observer.bufferSize) "socket" (printf "unix://%s/observer.sock" $a.observer.socketDir) "event_records" $a.observer.eventRecords -}}
{{- if $a.observer.tcp.enabled -}}
{{- $_ := set $observer "tcp_endpoint" (printf ":%d" (int $a.observer.tcp.port)) -}}
{{- if $a.observer.tcp.insecure -}}
{{- $_ := set $observer "tls" (dict "insecure" true) -}}
{{- else -}}
{{- $tls := dict "cert_file" "/etc/retina-otel/observer-tls/tls.crt" "key_file" "/etc/retina-otel/observer-tls/tls.key" -}}
{{- $_ := required "agent.observer.tcp.tlsSecretName is required when agent.observer.tcp.enabled is true (or set insecure: true)" $a.observer.tcp.tlsSecretName -}}
{{- if $a.observer.tcp.clientAuth -}}{{- $_ := set $tls "client_ca_file" "/etc/retina-otel/observer-tls/ca.crt" -}}{{- end -}}
{{- $_ := set $observer "tls" $tls -}}
{{- end -}}
{{- end -}}
{{- $_ := set $exporters "observer" $observer -}}
{{- $logExporters = append $logExporters "observer" -}}
{{- end -}}
{{- /* Connection spans: the spans connector ends the logs pipeline and feeds a traces pipeline to OTLP. */ -}}
{{- $traceExporters := list -}}
{{- if and $a.traces.enabled $flowReceivers $a.podLevel -}}
{{- $type := ternary "otlp" "otlphttp" (eq $a.otlp.protocol "grpc") -}}
{{- if not (hasKey $exporters $type) -}}{{- fail "agent.traces.enabled needs agent.otlp.enabled: spans go out over OTLP" -}}{{- end -}}
{{- $spans := dict "traces_configuration" (dict "enabled" $a.traces.watchTracesConfigurations) -}}
{{- if $a.traces.standalone -}}{{- $_ := set $spans "traces" $a.traces.standalone -}}{{- end -}}
{{- $_ := set $connectors "spans" (merge (deepCopy ($a.traces.config | default dict)) $spans) -}}
{{- $logExporters = append $logExporters "spans" -}}
{{- $traceExporters = list $type -}}
{{- end -}}
{{- /* Flows only travel through logs pipelines (retina_otel/service.py); a logs pipeline exists when
something takes its flows (a connector, OTLP flow logs, the observer). A receiver's own metrics are
published by the metrics pipelines that list it, so every receiver is in the metrics pipeline. */ -}}
{{- $pipelines := dict -}}
{{- $metricReceivers := concat $nodeReceivers $flowReceivers $metricConnectors -}}
{{- if $metricReceivers -}}
{{- $_ := set $pipelines "metrics" (dict "receivers" $metricReceivers "exporters" $metricExporters) -}}
{{- end -}}
{{- if and $flowReceivers $logExporters -}}
{{- $_ := set $pipelines "logs" (dict "receivers" $flowReceivers "processors" $flowProcessors "exporters" $logExporters) -}}
{{- end -}}
{{- if $hubbleExporters -}}
{{- $_ := set $pipelines "metrics/hubble" (dict "receivers" (list "hubblemetrics") "exporters" $hubbleExporters) -}}
{{- end -}}
{{- if $traceExporters -}}
{{- $_ := set $pipelines "traces" (dict "receivers" (list "spans") "exporters" $traceExporters) -}}
{{- end -}}

{{- $telemetry := dict "health" (dict "endpoint" (printf "0.0.0.0:%d" (int $a.healthPort))) "logs" (dict "level" $a.logLevel "format" $a.logFormat) -}}
{{- $config := dict "receivers" $receivers "exporters" $exporters "service" (dict "telemetry" $telemetry "pipelines" $pipelines) -}}
{{- if $processors -}}{{- $_ := set $config "processors" $processors -}}{{- end -}}
{{- if $connectors -}}{{- $_ := set $config "connectors" $connectors -}}{{- end -}}
{{- toYaml $config -}}
{{- end -}}
